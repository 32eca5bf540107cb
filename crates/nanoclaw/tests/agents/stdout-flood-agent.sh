#!/bin/sh
# Floods stdout without a single newline, then hangs.
head -c 5000000 /dev/zero | tr '\0' 'x'
exec sleep 3603
