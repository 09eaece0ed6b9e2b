# test/check.sh: the pass/fail bookkeeping of the bash test scripts (sourced): check NAME
# COMMAND... counts one check, finish prints the summary line run_tests.sh reads
# ("N passed, M failed") and exits non-zero on a failure.
passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok      $1"; }
bad() { failed=$((failed + 1)); echo "FAILED  $1"; }
check() {  # NAME COMMAND...: passes when the command succeeds
    local name=$1; shift
    if "$@"; then ok "$name"; else bad "$name"; fi
}
finish() { echo "$passed passed, $failed failed"; [ "$failed" -eq 0 ]; exit $?; }
