// data/bpe.h: GPT-2's byte-level BPE encoder (needs PCRE2).
//
// 1. Pre-tokenise with GPT-2's pattern (PCRE2, Unicode classes):
//      's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// 2. Map each piece's bytes to printable code points (gpt2_byte_symbol).
// 3. Merge adjacent symbols, always the pair ranked lowest, until none merge.
// 4. Look every symbol up in the vocabulary.
// The vocabulary and merges come from a Tokenizer: tokenizer.bin, or OpenAI's encoder.json
// and vocab.bpe through load_gpt2_files(). <|endoftext|> is id 50256; the data pipeline
// inserts it, it is never produced from text.
#pragma once
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <climits>
#include <unordered_map>
#include "tokenizer.h"

// Byte offset of the first invalid UTF-8 sequence, or -1 if the text is valid.
static inline long long utf8_error_offset(const std::string& s) {
    int errcode;
    PCRE2_SIZE off;
    pcre2_code* re = pcre2_compile((PCRE2_SPTR) "", 0, PCRE2_UTF, &errcode, &off, nullptr);
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(re, nullptr);
    int rc = pcre2_match(re, (PCRE2_SPTR)s.data(), s.size(), 0, 0, md, nullptr);
    long long bad = rc <= PCRE2_ERROR_UTF8_ERR1 && rc >= PCRE2_ERROR_UTF8_ERR21 ? (long long)pcre2_get_startchar(md) : -1;
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    return bad;
}

struct Gpt2Bpe {
    std::unordered_map<std::string, int> encoder;    // symbol (UTF-8 of mapped bytes) -> id
    std::unordered_map<std::string, int> ranks;      // "A B" -> merge rank
    std::string byte_symbol[256];                    // byte -> its printable code point, UTF-8
    std::unordered_map<std::string, std::vector<uint32_t>> cache;  // piece -> ids
    pcre2_code* re = nullptr;
    pcre2_match_data* md = nullptr;

    explicit Gpt2Bpe(const Tokenizer& t) {
        if (t.merges.empty()) die("tokenizer has no BPE merges: not a GPT-2 tokenizer");
        for (int b = 0; b < 256; b++) byte_symbol[b] = gpt2_byte_symbol(b);
        for (int id = 0; id < t.vocab_size(); id++) {
            std::string sym;
            for (unsigned char ch : t.pieces[id]) sym += byte_symbol[ch];
            encoder[sym] = id;
        }
        for (size_t r = 0; r < t.merges.size(); r++) ranks[t.merges[r]] = (int)r;
        const char* pat = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
        int err;
        PCRE2_SIZE off;
        re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
        if (!re) die("GPT-2 pattern failed to compile (PCRE2 error %d)", err);
        pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);  // optional speed-up; matching works without it
        md = pcre2_match_data_create_from_pattern(re, nullptr);
    }
    ~Gpt2Bpe() {
        pcre2_match_data_free(md);
        pcre2_code_free(re);
    }
    Gpt2Bpe(const Gpt2Bpe&) = delete;
    Gpt2Bpe& operator=(const Gpt2Bpe&) = delete;

    // Appends the ids of text, which must be valid UTF-8 (see utf8_error_offset).
    void encode(const std::string& text, std::vector<uint32_t>& out) {
        PCRE2_SIZE pos = 0;
        while (pos < text.size()) {  // the whole text was validated once: no per-match UTF check
            int rc = pcre2_match(re, (PCRE2_SPTR)text.data(), text.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
            if (rc < 0) die("GPT-2 pre-tokeniser failed at byte %zu (PCRE2 error %d)", (size_t)pos, rc);
            PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
            encode_piece(text.substr(ov[0], ov[1] - ov[0]), out);
            pos = ov[1];
        }
    }

    void encode_piece(const std::string& piece, std::vector<uint32_t>& out) {
        auto hit = cache.find(piece);
        if (hit == cache.end()) {
            std::vector<std::string> sym;
            for (unsigned char b : piece) sym.push_back(byte_symbol[b]);
            while (sym.size() > 1) {
                int best = INT_MAX;
                size_t at = 0;
                for (size_t i = 0; i + 1 < sym.size(); i++) {
                    auto r = ranks.find(sym[i] + " " + sym[i + 1]);
                    if (r != ranks.end() && r->second < best) { best = r->second; at = i; }
                }
                if (best == INT_MAX) break;
                // Merge every occurrence of the best pair, left to right.
                std::string a = sym[at], b = sym[at + 1];
                std::vector<std::string> merged;
                for (size_t i = 0; i < sym.size(); i++) {
                    if (i + 1 < sym.size() && sym[i] == a && sym[i + 1] == b) { merged.push_back(a + b); i++; }
                    else merged.push_back(sym[i]);
                }
                sym.swap(merged);
            }
            std::vector<uint32_t> ids;
            for (const std::string& s : sym) {
                auto e = encoder.find(s);
                if (e == encoder.end()) die("GPT-2 encoder has no symbol for a merged piece");
                ids.push_back((uint32_t)e->second);
            }
            hit = cache.emplace(piece, ids).first;
        }
        out.insert(out.end(), hit->second.begin(), hit->second.end());
    }
};
