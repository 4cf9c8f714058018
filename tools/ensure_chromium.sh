# Sourced by `make test` (and so by .ci/run): the report test renders the HTML report in a real headless
# browser, so Debian's chromium is installed first when it is missing (quietly: one line, apt's output only on
# failure). Bounded (apt may be missing, locked or slow): on failure the suite still runs and the browser test
# skips, saying why (ESR_LOCAL_NO_BROWSER); every other test still decides the exit status.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    echo "esr-local set-up: installing chromium (headless browser for the report test)"
    _sudo=""
    [ "$(id -u)" -eq 0 ] || _sudo="sudo -n"
    _log="$(mktemp)"
    if ! { command -v apt-get >/dev/null 2>&1 &&
           timeout 300 $_sudo apt-get update -qq &&
           DEBIAN_FRONTEND=noninteractive timeout 600 $_sudo apt-get install -y -qq chromium; } >"$_log" 2>&1; then
        tail -n 20 "$_log" >&2
        echo "esr-local set-up: could not install chromium; the headless-browser report test will be skipped" >&2
        export ESR_LOCAL_NO_BROWSER="chromium could not be installed (apt-get failed, timed out or needs root)"
    fi
    rm -f "$_log"
fi
