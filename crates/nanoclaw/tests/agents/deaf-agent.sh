#!/bin/sh
# Answers, turns idle, then ignores `_close` and keeps talking: the host must stop it
# once the close grace has passed.
cat >/dev/null &
echo '{"type":"result","text":"answered, and not leaving","inputs":0}'
echo '{"type":"idle","inputs":0}'
while :; do
    echo '{"type":"idle","inputs":0}'
    echo '{"type":"tool","name":"ignoring-close"}'
    sleep 0.3
done
