#!/bin/sh
# The first time it is asked to hang, it hangs (so the test can kill its sandbox from
# outside); after that, and for any other prompt, it answers.
read -r input
case "$input" in
  *hang-now*)
    if [ ! -e /workspace/group/.hung-once ]; then
      touch /workspace/group/.hung-once
      exec sleep 3602
    fi ;;
esac
printf '{"type":"result","text":"answered after the fault","inputs":0}\n'
printf '{"type":"idle","inputs":0}\n'
while [ ! -e /workspace/ipc/input/_close ]; do sleep 0.1; done
rm -f /workspace/ipc/input/_close
