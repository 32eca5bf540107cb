#!/bin/sh
# Writes far more than the output cap, then hangs.
head -c 5000000 /dev/zero | tr '\0' 'x' >&2
exec sleep 3602
