# Shell functions shared by the airlock stand-in images (busybox sh).
#
# A stand-in can be set to fail so that tests can build a broken release.
# The STANDIN_FAIL environment variable selects the failure mode. When it is
# unset, the first line of /etc/airlock-standin/fail (written by
# build-standins.sh --fail) does:
#   exit       the main process exits with status 1 right after start
#   unhealthy  the process stays up but its health check fails
#   (empty), 0, none, false: behave normally

standin_fail_file=/etc/airlock-standin/fail

# Print the failure mode: none, exit or unhealthy.
standin_fail_mode() {
    if [ -n "${STANDIN_FAIL+set}" ]; then
        mode=$STANDIN_FAIL
    elif [ -r "$standin_fail_file" ]; then
        mode=$(head -n 1 "$standin_fail_file")
    else
        mode=
    fi
    case $mode in
        "" | 0 | none | false | no) echo none ;;
        exit) echo exit ;;
        *) echo unhealthy ;;
    esac
}

# Exit with status 1 when the failure mode is "exit". $1 names the program.
standin_exit_if_requested() {
    if [ "$(standin_fail_mode)" = exit ]; then
        echo "$1: failing on purpose (failure mode exit), exiting with status 1" >&2
        exit 1
    fi
}

# Block until SIGTERM or SIGINT, then run the function named $1 and exit 0.
# A shell that is PID 1 ignores those signals unless it traps them, and a
# trap runs only between commands, hence the background sleep and `wait`.
standin_wait_for_stop() {
    standin_on_stop=$1
    trap '"$standin_on_stop"; exit 0' TERM INT QUIT
    sleep 2147483647 &
    while :; do
        wait $! || true
    done
}
