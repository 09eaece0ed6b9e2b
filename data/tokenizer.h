// data/tokenizer.h: the compact tokenizer file that train_phd reads to print text.
// No dependencies: decoding is a table lookup. (Encoding GPT-2 text needs data/bpe.h.)
//
// File: a header of 256 little-endian int32, header[0] = 20261127 (magic), header[1] = 1
// (version), header[2] = V (vocabulary size), header[3] = the end-of-text id (-1: none);
// then for each id 0..V-1: its byte length as uint16, then those bytes.
#pragma once
#include <string>
#include <vector>
#include "../utils.h"

static constexpr int kTokenizerMagic = 20261127;

struct Tokenizer {
    std::vector<std::string> pieces;  // (V) the bytes of every token
    int eot = -1;                     // end-of-text id, -1 if the vocabulary has none
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
    int32_t h[256] = {kTokenizerMagic, 1, t.vocab_size(), t.eot};
    FILE* f = atomic_open(path);
    fwrite_check(h, sizeof(int32_t), 256, f, path);
    for (const std::string& p : t.pieces) {
        if (p.size() > 65535) die("%s: a token of %zu bytes does not fit the format", path, p.size());
        uint16_t n = (uint16_t)p.size();
        fwrite_check(&n, sizeof n, 1, f, path);
        fwrite_check(p.data(), 1, n, f, path);
    }
    atomic_commit(f, path);
}

static inline Tokenizer load_tokenizer(const char* path) {
    FILE* f = fopen_check(path, "rb");
    int32_t h[256];
    fread_check(h, sizeof(int32_t), 256, f, path);
    if (h[0] != kTokenizerMagic || h[1] != 1) die("%s: not a tokenizer file (magic/version %d/%d)", path, h[0], h[1]);
    if (h[2] < 1 || h[3] < -1 || h[3] >= h[2]) die("%s: bad vocabulary size %d / end-of-text id %d", path, h[2], h[3]);
    Tokenizer t;
    t.eot = h[3];
    t.pieces.resize(h[2]);
    for (std::string& p : t.pieces) {
        uint16_t n;
        fread_check(&n, sizeof n, 1, f, path);
        p.resize(n);
        if (n) fread_check(&p[0], 1, n, f, path);
    }
    if (fgetc(f) != EOF) die("%s: trailing bytes after %d tokens", path, h[2]);
    fclose_check(f, path);
    return t;
}
