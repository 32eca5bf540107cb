//! `multipart/form-data` bodies (RFC 7578) for uploading a file to a platform, built in
//! memory (files are at most 50 MB), so no HTTP client feature is needed for it.

/// A form being built.
pub struct Form {
    boundary: String,
    body: Vec<u8>,
}

impl Default for Form {
    fn default() -> Self {
        Form::new()
    }
}

impl Form {
    pub fn new() -> Form {
        let mut random = [0u8; 12];
        // Uniqueness against the file's bytes matters, not secrecy: any bytes will do.
        let _ = getrandom::fill(&mut random);
        let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
        Form {
            boundary: format!("nanoclaw-{hex}"),
            body: Vec::new(),
        }
    }

    /// A text field.
    pub fn text(mut self, name: &str, value: &str) -> Form {
        self.head(name, None, None);
        self.body.extend_from_slice(value.as_bytes());
        self.body.extend_from_slice(b"\r\n");
        self
    }

    /// A file field.
    pub fn file(mut self, name: &str, filename: &str, media_type: &str, bytes: &[u8]) -> Form {
        self.head(name, Some(filename), Some(media_type));
        self.body.extend_from_slice(bytes);
        self.body.extend_from_slice(b"\r\n");
        self
    }

    fn head(&mut self, name: &str, filename: Option<&str>, media_type: Option<&str>) {
        let mut head = format!(
            "--{}\r\nContent-Disposition: form-data; name=\"{}\"",
            self.boundary,
            quote(name)
        );
        if let Some(filename) = filename {
            head.push_str(&format!("; filename=\"{}\"", quote(filename)));
        }
        head.push_str("\r\n");
        if let Some(media_type) = media_type {
            head.push_str(&format!("Content-Type: {media_type}\r\n"));
        }
        head.push_str("\r\n");
        self.body.extend_from_slice(head.as_bytes());
    }

    /// The `Content-Type` header value and the body.
    pub fn finish(mut self) -> (String, Vec<u8>) {
        self.body
            .extend_from_slice(format!("--{}--\r\n", self.boundary).as_bytes());
        (
            format!("multipart/form-data; boundary={}", self.boundary),
            self.body,
        )
    }
}

/// A name inside a quoted header parameter, as browsers send it: `"` becomes `%22`, and
/// line breaks (which would end the header) `%0D` / `%0A`.
fn quote(value: &str) -> String {
    value
        .replace('"', "%22")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_files_are_framed_by_the_boundary() {
        let (content_type, body) = Form::new()
            .text("chat_id", "42")
            .file("document", "a \"b\"\r\n.txt", "text/plain", b"hi\r\n--x")
            .finish();
        let boundary = content_type
            .strip_prefix("multipart/form-data; boundary=")
            .expect("boundary");
        let text = String::from_utf8(body).expect("utf-8");
        assert_eq!(
            text,
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"chat_id\"\r\n\r\n42\r\n\
                 --{boundary}\r\nContent-Disposition: form-data; name=\"document\"; filename=\"a %22b%22%0D%0A.txt\"\r\n\
                 Content-Type: text/plain\r\n\r\nhi\r\n--x\r\n--{boundary}--\r\n"
            )
        );
    }
}
