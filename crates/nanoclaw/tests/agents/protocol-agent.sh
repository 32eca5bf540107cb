#!/bin/sh
# A stand-in for nanoclaw-agent that speaks the host protocol from inside a real sandbox:
# reads the input object, answers, reports a session and idles; answers each follow-up
# file from /workspace/ipc/input/ and ends on _close. (It polls; the real agent does not.)
read -r input
case "$input" in
  *'"prompt"'*) ;;
  *) echo '{"type":"error","message":"no input object on stdin"}'; exit 1 ;;
esac
echo "uid $(id -u) pwd $(pwd)" >&2
printf '{"type":"session","session_id":"sandbox-session"}\n'
printf '{"type":"result","text":"hello from %s","inputs":0}\n' "$(hostname)"
printf '{"type":"idle","inputs":0}\n'
seen=0
while :; do
  if [ -e /workspace/ipc/input/_close ]; then
    rm -f /workspace/ipc/input/_close
    exit 0
  fi
  for f in /workspace/ipc/input/*.json; do
    [ -e "$f" ] || continue
    seen=$((seen + 1))
    rm -f "$f"
    printf '{"type":"result","text":"follow-up %s seen","inputs":%s}\n' "$seen" "$seen"
    printf '{"type":"idle","inputs":%s}\n' "$seen"
  done
  sleep 0.05
done
