// data/dataloader.h: llm.c token shards in, contiguous (B, T+1) windows out.
//
// Shard file: a header of 256 little-endian int32, then the tokens.
//   header[0] magic: 20240520 (tokens are uint16) or 20240801 (tokens are uint32)
//   header[1] version: 1 for uint16, 7 for uint32
//   header[2] number of tokens
// A batch takes B*T+1 consecutive tokens from the current position: row b is tokens
// [pos + b*T, pos + b*T + T] (inputs) shifted by one (targets); the position then moves
// by B*T. A batch never straddles two shards: when fewer than B*T+1 tokens remain, the
// loader moves to the next shard (and after the last, back to the first).
#pragma once
#include <glob.h>
#include <string>
#include <vector>
#include "../common/utils.h"

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

// The whole shard, every token checked against the vocabulary size V.
static inline std::vector<uint32_t> load_shard(const char* path, int V) {
    FILE* f = fopen_check(path, "rb");
    ShardInfo s = shard_info(path, f);
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

// Writes a shard atomically; uint16 tokens when they all fit, else uint32.
static inline void write_shard(const char* path, const uint32_t* tokens, int64_t n) {
    bool wide = false;
    for (int64_t i = 0; i < n; i++) wide |= tokens[i] > 65535;
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
    int shard = -1;                  // index into files of the loaded shard
    int64_t pos = 0;                 // next token to read in it
    std::vector<uint32_t> tokens;    // the loaded shard

    // Every matching shard's header is checked now; its tokens when it is first read.
    void open(const char* pattern, int B_, int T_, int V_) {
        B = B_; T = T_; V = V_;
        glob_t g;
        int rc = glob(pattern, 0, nullptr, &g);
        if (rc != 0) die("%s: no file matches this pattern", pattern);
        files.assign(g.gl_pathv, g.gl_pathv + g.gl_pathc);
        globfree(&g);
        for (const std::string& p : files) {
            FILE* f = fopen_check(p.c_str(), "rb");
            ShardInfo s = shard_info(p.c_str(), f);
            fclose_check(f, p.c_str());
            if (s.ntok < (int64_t)B * T + 1)
                die("%s: %lld tokens, shorter than one batch (B*T+1 = %lld)", p.c_str(), (long long)s.ntok,
                    (long long)B * T + 1);
        }
        seek(0, 0);
    }
    void seek(int shard_, int64_t pos_) {
        if (shard_ < 0 || shard_ >= (int)files.size()) die("data position names shard %d of %zu", shard_, files.size());
        if (shard_ != shard) tokens = load_shard(files[shard_].c_str(), V);
        shard = shard_;
        pos = pos_;
        if (pos < 0 || pos + (int64_t)B * T + 1 > (int64_t)tokens.size())
            die("%s: data position %lld is outside the shard", files[shard].c_str(), (long long)pos);
    }
    // inputs, targets: (B, T)
    void next_batch(int* inputs, int* targets) {
        for (int i = 0; i < B * T; i++) {
            inputs[i] = (int)tokens[pos + i];
            targets[i] = (int)tokens[pos + i + 1];
        }
        pos += (int64_t)B * T;
        if (pos + (int64_t)B * T + 1 > (int64_t)tokens.size()) seek((shard + 1) % (int)files.size(), 0);
    }
};
