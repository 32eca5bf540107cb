//! The IPC authorization matrix (SPEC §10), in one exhaustive match.
//!
//! | operation | main | other group |
//! |---|---|---|
//! | message to own chat | yes | yes |
//! | message to any other chat (registered or not) | yes | no |
//! | schedule task for itself | yes | yes |
//! | schedule task for another registered group | yes | no |
//! | schedule task for an unregistered JID | no | no |
//! | pause / resume / cancel / update own task | yes | yes |
//! | … another group's task | yes | no |
//! | register_group, refresh_groups | yes | no |

/// Who sent a request: learned from the directory the file was found in, never from
/// its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub folder: String,
    /// Whether `folder` belongs to the registered main group.
    pub is_main: bool,
}

/// What a request touches, resolved against the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// A message to a chat, registered to this folder (`None`: not registered).
    Message { chat_folder: Option<&'a str> },
    /// A new task for a chat registered to this folder (`None`: not registered).
    ScheduleTask { target_folder: Option<&'a str> },
    /// Pausing, resuming, cancelling or updating a task of this folder.
    ManageTask { task_folder: &'a str },
    /// `register_group` and `refresh_groups`.
    Admin,
}

/// Allowed, or why not.
pub fn authorize(source: &Source, target: Target<'_>) -> Result<(), &'static str> {
    let own = |folder: Option<&str>| folder == Some(source.folder.as_str());
    match target {
        Target::Message { chat_folder } => {
            if source.is_main || own(chat_folder) {
                Ok(())
            } else {
                Err("only the main group may message other chats")
            }
        }
        Target::ScheduleTask {
            target_folder: None,
        } => Err("tasks can only be scheduled for registered groups"),
        Target::ScheduleTask { target_folder } => {
            if source.is_main || own(target_folder) {
                Ok(())
            } else {
                Err("only the main group may schedule tasks for other groups")
            }
        }
        Target::ManageTask { task_folder } => {
            if source.is_main || own(Some(task_folder)) {
                Ok(())
            } else {
                Err("only the main group may manage other groups' tasks")
            }
        }
        Target::Admin => {
            if source.is_main {
                Ok(())
            } else {
                Err("only the main group may register or refresh groups")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_of_the_matrix() {
        let main = Source {
            folder: "main".into(),
            is_main: true,
        };
        let team = Source {
            folder: "team".into(),
            is_main: false,
        };
        // (row, target, main allowed, other allowed); "other" is `team` throughout.
        let rows: [(&str, Target<'_>, bool, bool); 12] = [
            (
                "message own chat (main)",
                Target::Message {
                    chat_folder: Some("main"),
                },
                true,
                false,
            ),
            (
                "message own chat (team)",
                Target::Message {
                    chat_folder: Some("team"),
                },
                true,
                true,
            ),
            (
                "message another registered chat",
                Target::Message {
                    chat_folder: Some("other"),
                },
                true,
                false,
            ),
            (
                "message an unregistered chat",
                Target::Message { chat_folder: None },
                true,
                false,
            ),
            (
                "schedule for itself (main)",
                Target::ScheduleTask {
                    target_folder: Some("main"),
                },
                true,
                false,
            ),
            (
                "schedule for itself (team)",
                Target::ScheduleTask {
                    target_folder: Some("team"),
                },
                true,
                true,
            ),
            (
                "schedule for another registered group",
                Target::ScheduleTask {
                    target_folder: Some("other"),
                },
                true,
                false,
            ),
            (
                "schedule for an unregistered JID",
                Target::ScheduleTask {
                    target_folder: None,
                },
                false,
                false,
            ),
            (
                "manage own task (team)",
                Target::ManageTask {
                    task_folder: "team",
                },
                true,
                true,
            ),
            (
                "manage own task (main)",
                Target::ManageTask {
                    task_folder: "main",
                },
                true,
                false,
            ),
            (
                "manage another group's task",
                Target::ManageTask {
                    task_folder: "other",
                },
                true,
                false,
            ),
            (
                "register_group / refresh_groups",
                Target::Admin,
                true,
                false,
            ),
        ];
        for (row, target, main_ok, team_ok) in rows {
            assert_eq!(authorize(&main, target).is_ok(), main_ok, "main: {row}");
            assert_eq!(authorize(&team, target).is_ok(), team_ok, "team: {row}");
        }
    }

    #[test]
    fn a_folder_named_main_is_not_main() {
        // Privilege comes from the registered main group, not from a folder's name.
        let impostor = Source {
            folder: "main".into(),
            is_main: false,
        };
        assert!(authorize(&impostor, Target::Admin).is_err());
        assert!(
            authorize(
                &impostor,
                Target::Message {
                    chat_folder: Some("team")
                }
            )
            .is_err()
        );
    }
}
