// data/tokenizer.h: the compact tokenizer file that train_phd reads to print text and, with
// data/bpe.h, to encode text prompts. No dependencies: decoding is a table lookup.
//
// File: a header of 256 little-endian int32, header[0] = 20261127 (magic), header[1] = 2
// (version), header[2] = V (vocabulary size), header[3] = the end-of-text id (-1: none),
// header[4] = R, the ids 0..R-1 that BPE makes from text (their order is the merge order, as
// tiktoken's ranks; 0 for the byte-level tokenizer); then for each id 0..V-1 its byte length
// as uint16 and those bytes (the special tokens' text for ids R..V-1, empty for unused ids);
// then the pre-tokeniser's regular expression as a uint32 length and its UTF-8 (empty for
// the byte-level tokenizer). Version 1 files, from before cl100k, still load: the same
// header without R, the pieces, then GPT-2's merges (0 for bytes), which read as GPT-2's
// pattern with R = V - 1.
#pragma once
#include <string>
#include <vector>
#include "../kernels/utils.h"

static constexpr int kTokenizerMagic = 20261127;

// The pre-tokenisers of GPT-2 and cl100k_base, as OpenAI's tiktoken defines them.
static constexpr const char* kGpt2Pattern = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static constexpr const char* kCl100kPattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

struct Tokenizer {
    std::vector<std::string> pieces;  // (V) the bytes of every token; the special tokens' text
    int eot = -1;                     // end-of-text id, -1 if the vocabulary has none
    int ranked = 0;                   // ids 0 .. ranked - 1 come from BPE, in merge order; 0: byte-level
    std::string pattern;              // the pre-tokeniser (PCRE2); empty for the byte-level tokenizer
    int vocab_size() const { return (int)pieces.size(); }
    // The bytes of a token; the end-of-text token prints as "<|endoftext|>".
    std::string decode(int id) const {
        if (id == eot) return "<|endoftext|>";
        return id >= 0 && id < vocab_size() ? pieces[id] : std::string("<?>");
    }
};

// The byte-level tokenizer: id b is byte b, V = 256, no end-of-text token (documents are
// separated by byte 0, which text files do not contain).
static inline Tokenizer byte_tokenizer() {
    Tokenizer t;
    for (int b = 0; b < 256; b++) t.pieces.push_back(std::string(1, (char)b));
    return t;
}

static inline void save_tokenizer(const char* path, const Tokenizer& t) {
    int32_t h[256] = {kTokenizerMagic, 2, t.vocab_size(), t.eot, t.ranked};
    FILE* f = atomic_open(path);
    fwrite_check(h, sizeof(int32_t), 256, f, path);
    auto put = [&](const std::string& s) {
        if (s.size() > 65535) die("%s: an entry of %zu bytes does not fit the format", path, s.size());
        uint16_t n = (uint16_t)s.size();
        fwrite_check(&n, sizeof n, 1, f, path);
        fwrite_check(s.data(), 1, n, f, path);
    };
    for (const std::string& p : t.pieces) put(p);
    const uint32_t np = (uint32_t)t.pattern.size();
    fwrite_check(&np, sizeof np, 1, f, path);
    fwrite_check(t.pattern.data(), 1, np, f, path);
    atomic_commit(f, path);
}

static inline Tokenizer load_tokenizer(const char* path) {
    FILE* f = fopen_check(path, "rb");
    int32_t h[256];
    fread_check(h, sizeof(int32_t), 256, f, path);
    if (h[0] != kTokenizerMagic || (h[1] != 1 && h[1] != 2)) die("%s: not a tokenizer file (magic/version %d/%d)", path, h[0], h[1]);
    if (h[2] < 1 || h[3] < -1 || h[3] >= h[2]) die("%s: bad vocabulary size %d / end-of-text id %d", path, h[2], h[3]);
    if (h[1] == 2 && (h[4] < 0 || h[4] > h[2])) die("%s: bad count %d of BPE ids for vocabulary size %d", path, h[4], h[2]);
    Tokenizer t;
    t.eot = h[3];
    t.ranked = h[1] == 2 ? h[4] : 0;
    auto get = [&](std::string& s) {
        uint16_t n;
        fread_check(&n, sizeof n, 1, f, path);
        s.resize(n);
        if (n) fread_check(&s[0], 1, n, f, path);
    };
    t.pieces.resize(h[2]);
    for (std::string& p : t.pieces) get(p);
    uint32_t n;
    fread_check(&n, sizeof n, 1, f, path);
    if (h[1] == 1) {  // GPT-2's merges, or none: read past them
        if (n > 10000000) die("%s: bad merge count %u", path, n);
        for (std::string m; n > 0; n--) get(m);
        if (t.vocab_size() > 256) { t.pattern = kGpt2Pattern; t.ranked = t.vocab_size() - 1; }
    } else {
        if (n > 65536) die("%s: bad pattern length %u", path, n);
        t.pattern.resize(n);
        if (n) fread_check(&t.pattern[0], 1, n, f, path);
    }
    if (fgetc(f) != EOF) die("%s: trailing bytes after %d tokens", path, h[2]);
    fclose_check(f, path);
    return t;
}
