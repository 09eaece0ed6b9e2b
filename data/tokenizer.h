// data/tokenizer.h: the compact tokenizer file that train_phd reads to print text and, with
// data/bpe.h, to encode GPT-2 text prompts. No dependencies: decoding is a table lookup.
//
// File: a header of 256 little-endian int32, header[0] = 20261127 (magic), header[1] = 1
// (version), header[2] = V (vocabulary size), header[3] = the end-of-text id (-1: none);
// then for each id 0..V-1: its byte length as uint16, then those bytes; then the number of
// BPE merges as uint32 (0 for the byte-level tokenizer) and each merge, in rank order, as
// a uint16 length and the bytes of "A B" (the two symbols in GPT-2's printable byte
// alphabet, gpt2_byte_symbol(), separated by a space, as in OpenAI's vocab.bpe).
#pragma once
#include <string>
#include <vector>
#include "../kernels/utils.h"

static constexpr int kTokenizerMagic = 20261127;

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the others for
// code points 256, 257, ... in order; returned as UTF-8.
static inline std::string gpt2_byte_symbol(int byte) {
    int extra = 0;
    for (int b = 0; b < byte; b++) extra += !((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF));
    bool printable = (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) || (byte >= 0xAE && byte <= 0xFF);
    int cp = printable ? byte : 256 + extra;
    return cp < 0x80 ? std::string(1, (char)cp) : std::string{(char)(0xC0 | (cp >> 6)), (char)(0x80 | (cp & 0x3F))};
}

struct Tokenizer {
    std::vector<std::string> pieces;  // (V) the bytes of every token
    int eot = -1;                     // end-of-text id, -1 if the vocabulary has none
    std::vector<std::string> merges;  // GPT-2 BPE merges "A B" in rank order; empty for bytes
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
    auto put = [&](const std::string& s) {
        if (s.size() > 65535) die("%s: an entry of %zu bytes does not fit the format", path, s.size());
        uint16_t n = (uint16_t)s.size();
        fwrite_check(&n, sizeof n, 1, f, path);
        fwrite_check(s.data(), 1, n, f, path);
    };
    for (const std::string& p : t.pieces) put(p);
    uint32_t nm = (uint32_t)t.merges.size();
    fwrite_check(&nm, sizeof nm, 1, f, path);
    for (const std::string& m : t.merges) put(m);
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
    auto get = [&](std::string& s) {
        uint16_t n;
        fread_check(&n, sizeof n, 1, f, path);
        s.resize(n);
        if (n) fread_check(&s[0], 1, n, f, path);
    };
    t.pieces.resize(h[2]);
    for (std::string& p : t.pieces) get(p);
    uint32_t nm;
    fread_check(&nm, sizeof nm, 1, f, path);
    if (nm > 10000000) die("%s: bad merge count %u", path, nm);
    t.merges.resize(nm);
    for (std::string& m : t.merges) get(m);
    if (fgetc(f) != EOF) die("%s: trailing bytes after %d tokens", path, h[2]);
    fclose_check(f, path);
    return t;
}
