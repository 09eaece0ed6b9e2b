# test/check.sh: what the bash test scripts share (sourced): the pass/fail bookkeeping
# (check NAME COMMAND... counts one check, finish prints the summary line run_tests.sh reads,
# "N passed, M failed", and exits non-zero on a failure), and make_shard.
passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok      $1"; }
bad() { failed=$((failed + 1)); echo "FAILED  $1"; }
check() {  # NAME COMMAND...: passes when the command succeeds
    local name=$1; shift
    if "$@"; then ok "$name"; else bad "$name"; fi
}
finish() { echo "$passed passed, $failed failed"; [ "$failed" -eq 0 ]; exit $?; }

# Synthetic byte-level shards (llm.c format: 256 int32 header, magic 20240520, version 1,
# token count; uint16 tokens): words from a small list, so that the loss can fall quickly.
make_shard() {  # FILE TOKENS SEED
    perl -e '
        my ($out, $n, $seed) = @ARGV;
        my @w = qw(in the beginning god created heaven and earth was without form void darkness upon face of deep);
        srand($seed);
        my $s = "";
        $s .= $w[int(rand(@w))] . (rand() < 0.15 ? ".\n" : " ") while length($s) < $n;
        open(my $f, ">", $out) or die "$out: $!";
        binmode $f;
        print $f pack("l<256", 20240520, 1, $n, (0) x 253);
        print $f pack("S<*", map { ord } split //, substr($s, 0, $n));
        close $f or die;' "$@"
}
