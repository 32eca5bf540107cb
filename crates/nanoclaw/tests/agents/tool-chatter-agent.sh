#!/bin/sh
# Says which tool it runs, forever, and never answers: tool events are not progress, so
# the host must still stop it after CONTAINER_TIMEOUT.
while :; do
    echo '{"type":"tool","name":"Bash"}'
    sleep 0.3
done
