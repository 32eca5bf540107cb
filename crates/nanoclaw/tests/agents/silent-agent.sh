#!/bin/sh
# Never says anything: the host must kill it after CONTAINER_TIMEOUT.
exec sleep 3601
