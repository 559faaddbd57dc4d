#!/bin/sh
# Entry point of the redis stand-in. As in the official image, options alone
# mean "redis-server with these options".
set -eu

if [ $# -eq 0 ] || [ "${1#-}" != "$1" ]; then
    set -- redis-server "$@"
fi
exec "$@"
