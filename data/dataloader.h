// data/dataloader.h: llm.c token shards in, contiguous (B, T+1) windows out.
//
// Shard file: a header of 256 little-endian int32, then the tokens.
//   header[0] magic: 20240520 (tokens are uint16) or 20240801 (tokens are uint32), as llm.c's
//   header[1] version: 1 for uint16, 7 for uint32        GPT-2 and Llama 3 shards
//   header[2] number of tokens
// A batch takes B*T+1 consecutive tokens from the current position: row b is tokens
// [pos + b*T, pos + b*T + T] (inputs) shifted by one (targets); the position then moves
// by B*T. A batch never straddles two shards: when fewer than B*T+1 tokens remain, the
// loader moves to the next shard (and after the last, back to the first).
// With N ranks (kernels/dist.h) the batch is the N*B rows one process with N times the
// batch would read, and rank r takes rows r*B .. r*B+B-1 of it: together the ranks see that
// process's token stream exactly, and the position (the same on every rank) moves by N*B*T.
#pragma once
#include <glob.h>
#include <string>
#include <vector>
#include "../kernels/utils.h"

static constexpr int kShardMagic16 = 20240520, kShardVersion16 = 1;
static constexpr int kShardMagic32 = 20240801, kShardVersion32 = 7;

struct ShardInfo {
    int64_t ntok;
    int token_bytes;  // 2 or 4
};

// Reads and checks a shard's header and size against the file's length.
static inline ShardInfo shard_info(const char* path, FILE* f) {
    int32_t h[256];
    int64_t size = file_size_check(f, path);
    if (size < (int64_t)sizeof h) die("%s: not a token shard (file shorter than the 1024-byte header)", path);
    fread_check(h, sizeof(int32_t), 256, f, path);
    ShardInfo s;
    if (h[0] == kShardMagic16 && h[1] == kShardVersion16) s.token_bytes = 2;
    else if (h[0] == kShardMagic32 && h[1] == kShardVersion32) s.token_bytes = 4;
    else die("%s: bad shard magic/version %d/%d (want %d/%d for uint16 or %d/%d for uint32 tokens)", path, h[0], h[1],
             kShardMagic16, kShardVersion16, kShardMagic32, kShardVersion32);
    s.ntok = h[2];
    if (s.ntok < 0 || size != (int64_t)sizeof h + s.ntok * s.token_bytes)
        die("%s: header says %lld tokens (%lld bytes) but the file has %lld bytes", path, (long long)s.ntok,
            (long long)(sizeof h + s.ntok * s.token_bytes), (long long)size);
    return s;
}

// The whole shard, every token checked against the vocabulary size V. A vocabulary past
// uint16's ids takes uint32 shards only: a uint16 shard cannot be of its tokenizer.
static inline std::vector<uint32_t> load_shard(const char* path, int V) {
    FILE* f = fopen_check(path, "rb");
    ShardInfo s = shard_info(path, f);
    if (s.token_bytes == 2 && V > 65536)
        die("%s: uint16 tokens, but the vocabulary has %d ids: a shard of another tokenizer (prepare the text again with this one)",
            path, V);
    std::vector<uint32_t> tok(s.ntok);
    if (s.token_bytes == 2) {
        std::vector<uint16_t> raw(s.ntok);
        fread_check(raw.data(), 2, s.ntok, f, path);
        std::copy(raw.begin(), raw.end(), tok.begin());
    } else {
        fread_check(tok.data(), 4, s.ntok, f, path);
    }
    fclose_check(f, path);
    for (int64_t i = 0; i < s.ntok; i++)
        if (tok[i] >= (uint32_t)V)
            die("%s: token %u at byte offset %lld is out of range for vocabulary size %d", path, tok[i],
                (long long)(1024 + i * s.token_bytes), V);
    return tok;
}

// Writes a shard of a vocabulary of V ids atomically: uint16 tokens where every id fits
// (V <= 65536, llm.c's GPT-2 shards), else uint32 (llm.c's Llama 3 shards).
static inline void write_shard(const char* path, const uint32_t* tokens, int64_t n, int V) {
    const bool wide = V > 65536;
    for (int64_t i = 0; i < n; i++)
        if (tokens[i] >= (uint32_t)V) die("%s: token %u is out of range for vocabulary size %d", path, tokens[i], V);
    if (n > INT32_MAX) die("%s: %lld tokens do not fit one shard", path, (long long)n);
    int32_t h[256] = {};
    h[0] = wide ? kShardMagic32 : kShardMagic16;
    h[1] = wide ? kShardVersion32 : kShardVersion16;
    h[2] = (int32_t)n;
    FILE* f = atomic_open(path);
    fwrite_check(h, sizeof(int32_t), 256, f, path);
    if (wide) {
        fwrite_check(tokens, 4, n, f, path);
    } else {
        std::vector<uint16_t> raw(tokens, tokens + n);
        fwrite_check(raw.data(), 2, n, f, path);
    }
    atomic_commit(f, path);
}

struct DataLoader {
    std::vector<std::string> files;  // sorted matches of the glob
    int B = 0, T = 0, V = 0;
    int rank = 0, ranks = 1;         // this rank's rows of the ranks' batch
    int shard = -1;                  // index into files of the loaded shard
    int64_t pos = 0;                 // start of the next batch in it (of all ranks')
    int64_t total = 0;               // tokens in all the shards
    std::vector<uint32_t> tokens;    // the loaded shard

    int64_t span() const { return (int64_t)ranks * B * T; }  // tokens the ranks' batch moves on by

    // Every matching shard's header is checked now; its tokens when it is first read.
    void open(const char* pattern, int B_, int T_, int V_, int rank_ = 0, int ranks_ = 1) {
        B = B_; T = T_; V = V_; rank = rank_; ranks = ranks_;
        glob_t g;
        int rc = glob(pattern, 0, nullptr, &g);
        if (rc != 0) die("%s: no file matches this pattern", pattern);
        files.assign(g.gl_pathv, g.gl_pathv + g.gl_pathc);
        globfree(&g);
        for (const std::string& p : files) {
            FILE* f = fopen_check(p.c_str(), "rb");
            ShardInfo s = shard_info(p.c_str(), f);
            fclose_check(f, p.c_str());
            if (s.ntok < span() + 1)
                die("%s: %lld tokens, shorter than one batch (%sB*T+1 = %lld)", p.c_str(), (long long)s.ntok,
                    ranks > 1 ? "ranks*" : "", (long long)span() + 1);
            total += s.ntok;
        }
        seek(0, 0);
    }
    // A position where the ranks' batch no longer fits (a run resumed with another batch or
    // number of ranks) means, as in next_batch, the start of the next shard.
    void seek(int shard_, int64_t pos_) {
        if (shard_ < 0 || shard_ >= (int)files.size()) die("data position names shard %d of %zu", shard_, files.size());
        if (shard_ != shard) tokens = load_shard(files[shard_].c_str(), V);
        shard = shard_;
        pos = pos_;
        if (pos < 0 || pos > (int64_t)tokens.size())
            die("%s: data position %lld is outside the shard", files[shard].c_str(), (long long)pos);
        if (pos + span() + 1 > (int64_t)tokens.size()) seek((shard + 1) % (int)files.size(), 0);
    }
    // inputs, targets: (B, T), this rank's rows
    void next_batch(int* inputs, int* targets) {
        const int64_t at = pos + (int64_t)rank * B * T;
        for (int i = 0; i < B * T; i++) {
            inputs[i] = (int)tokens[at + i];
            targets[i] = (int)tokens[at + i + 1];
        }
        seek(shard, pos + span());
    }
};
