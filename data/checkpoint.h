// data/checkpoint.h: the three binary files the engine writes, all little-endian, each a header
// of 256 int32 followed by raw arrays. Every file is written to PATH.tmp and renamed.
//
// Config block, header[2..15] of all three files:
//   2 V   3 Vp   4 L   5 D   6 H   7 Hkv   8 F   9 maxT   10 variant (0 vanilla, 1 phd,
//   2 phd-swa, 3 phd-cswa, 4 naive)   11 K   12 W   13 C   14..15 P (parameter count, lo/hi)
//   and the block (model.h §10), header[32..34]: 32 qk-norm (0/1)   33 norm placement (0 pre,
//   1 reordered)   34 z-loss coefficient (float32 bits). Files from before §10 hold zeros there:
//   §9's block, as they were written for.
//
// Model checkpoint: header[0] = 20261124, header[1] = 1, config block; then P float32 in
//   the order of param_tensors() (model.h): E, then per layer g_attn, wq, wk, wv, wo, g_ffn,
//   w1, w3, w2 (and with qk-norm g_q, g_k), then g_final, wout; each row-major (out, in).
// Training state: header[0] = 20261125, header[1] = 1, config block, header[16] = steps
//   done, header[17] = data shard index, header[18..19] = data position (int64 lo/hi),
//   header[20..21] = sampling RNG state (uint64 lo/hi); then AdamW m (P float32), v (P float32).
// Debug state: header[0] = 20261126, header[1] = 1, config block, header[16] = B,
//   header[17] = T; then tokens (B*T int32), targets (B*T int32), last-copy logits
//   (B*T*V float32, padded columns left out), mean loss (1 float32), gradients of the mean
//   loss (P float32, parameter order).
#pragma once
#include <cstring>
#include <vector>
#include "../model.h"

static constexpr int kCkptMagic = 20261124, kStateMagic = 20261125, kDebugMagic = 20261126, kFormatVersion = 1;

static inline void header_put_config(int32_t* h, int magic, const Config& c) {
    for (int i = 0; i < 256; i++) h[i] = 0;
    uint64_t P = num_params(c);
    int32_t vals[] = {magic, kFormatVersion, c.V, c.Vp, c.L, c.D, c.H, c.Hkv, c.F, c.maxT, c.variant, c.K, c.W, c.C,
                      (int32_t)(P & 0xffffffffu), (int32_t)(P >> 32)};
    for (int i = 0; i < 16; i++) h[i] = vals[i];
    h[32] = c.qk_norm;
    h[33] = c.norm;
    memcpy(&h[34], &c.z_loss, sizeof(float));
}

// Reads a header, checks magic, version and config; returns the config.
static inline Config header_get_config(FILE* f, const char* path, int magic, int32_t* h, int64_t payload_bytes_per_param,
                                       int64_t extra_bytes) {
    int64_t size = file_size_check(f, path);
    if (size < 1024) die("%s: truncated file (shorter than its 1024-byte header)", path);
    fread_check(h, sizeof(int32_t), 256, f, path);
    if (h[0] != magic) die("%s: bad magic %d (want %d)", path, h[0], magic);
    if (h[1] != kFormatVersion) die("%s: unsupported version %d (want %d)", path, h[1], kFormatVersion);
    Config c;
    c.V = h[2]; c.Vp = h[3]; c.L = h[4]; c.D = h[5]; c.H = h[6]; c.Hkv = h[7]; c.F = h[8]; c.maxT = h[9];
    c.variant = h[10]; c.K = h[11]; c.W = h[12]; c.C = h[13];
    c.qk_norm = h[32]; c.norm = h[33];
    memcpy(&c.z_loss, &h[34], sizeof(float));
    std::string err = config_error(c);
    if (!err.empty()) die("%s: %s", path, err.c_str());
    uint64_t P = (uint32_t)h[14] | ((uint64_t)(uint32_t)h[15] << 32);
    if (P != num_params(c)) die("%s: parameter count %llu does not match its config (%zu)", path, (unsigned long long)P, num_params(c));
    int64_t want = 1024 + (int64_t)P * payload_bytes_per_param + extra_bytes;
    if (size != want) die("%s: file has %lld bytes, its header implies %lld", path, (long long)size, (long long)want);
    return c;
}

static inline void save_checkpoint(const char* path, const Config& c, const float* params) {
    int32_t h[256];
    header_put_config(h, kCkptMagic, c);
    FILE* f = atomic_open(path);
    fwrite_check(h, sizeof(int32_t), 256, f, path);
    fwrite_check(params, sizeof(float), num_params(c), f, path);
    atomic_commit(f, path);
}

static inline Config load_checkpoint(const char* path, std::vector<float>* params) {
    FILE* f = fopen_check(path, "rb");
    int32_t h[256];
    Config c = header_get_config(f, path, kCkptMagic, h, 4, 0);
    params->resize(num_params(c));
    fread_check(params->data(), sizeof(float), params->size(), f, path);
    fclose_check(f, path);
    return c;
}

struct TrainState {
    int step = 0;            // optimizer steps done
    int shard = 0;           // data loader position
    int64_t pos = 0;
    uint64_t rng = 0;        // sampling RNG
    std::vector<float> m, v; // AdamW moments (P)
};

static inline void save_state(const char* path, const Config& c, const TrainState& s) {
    int32_t h[256];
    header_put_config(h, kStateMagic, c);
    h[16] = s.step; h[17] = s.shard;
    h[18] = (int32_t)(s.pos & 0xffffffff); h[19] = (int32_t)(s.pos >> 32);
    h[20] = (int32_t)(s.rng & 0xffffffffu); h[21] = (int32_t)(s.rng >> 32);
    FILE* f = atomic_open(path);
    fwrite_check(h, sizeof(int32_t), 256, f, path);
    fwrite_check(s.m.data(), sizeof(float), s.m.size(), f, path);
    fwrite_check(s.v.data(), sizeof(float), s.v.size(), f, path);
    atomic_commit(f, path);
}

static inline TrainState load_state(const char* path, const Config& model_cfg) {
    FILE* f = fopen_check(path, "rb");
    int32_t h[256];
    Config c = header_get_config(f, path, kStateMagic, h, 8, 0);
    if (variant_name(c) != variant_name(model_cfg) || block_name(c) != block_name(model_cfg) || num_params(c) != num_params(model_cfg))
        die("%s: training state is for a different model (%s, block %s) than the checkpoint (%s, block %s)", path, variant_name(c).c_str(),
            block_name(c).c_str(), variant_name(model_cfg).c_str(), block_name(model_cfg).c_str());
    TrainState s;
    s.step = h[16]; s.shard = h[17];
    s.pos = (int64_t)(uint32_t)h[18] | ((int64_t)h[19] << 32);
    s.rng = (uint64_t)(uint32_t)h[20] | ((uint64_t)(uint32_t)h[21] << 32);
    s.m.resize(num_params(c));
    s.v.resize(num_params(c));
    fread_check(s.m.data(), sizeof(float), s.m.size(), f, path);
    fread_check(s.v.data(), sizeof(float), s.v.size(), f, path);
    fclose_check(f, path);
    return s;
}

struct DebugState {
    Config cfg;
    int B = 0, T = 0;
    std::vector<int32_t> tokens, targets;  // (B, T)
    std::vector<float> logits;             // (B, T, V)
    float loss = 0;
    std::vector<float> grads;              // (P)
};

static inline void save_debug_state(const char* path, const DebugState& s) {
    int32_t h[256];
    header_put_config(h, kDebugMagic, s.cfg);
    h[16] = s.B; h[17] = s.T;
    FILE* f = atomic_open(path);
    fwrite_check(h, sizeof(int32_t), 256, f, path);
    fwrite_check(s.tokens.data(), sizeof(int32_t), s.tokens.size(), f, path);
    fwrite_check(s.targets.data(), sizeof(int32_t), s.targets.size(), f, path);
    fwrite_check(s.logits.data(), sizeof(float), s.logits.size(), f, path);
    fwrite_check(&s.loss, sizeof(float), 1, f, path);
    fwrite_check(s.grads.data(), sizeof(float), s.grads.size(), f, path);
    atomic_commit(f, path);
}

static inline DebugState load_debug_state(const char* path) {
    FILE* f = fopen_check(path, "rb");
    int32_t h[256];
    int64_t size = file_size_check(f, path);
    if (size < 1024) die("%s: truncated file (shorter than its 1024-byte header)", path);
    fread_check(h, sizeof(int32_t), 256, f, path);
    if (h[16] < 1 || h[17] < 1) die("%s: bad batch shape B=%d T=%d", path, h[16], h[17]);
    int64_t BT = (int64_t)h[16] * h[17];
    if (fseeko(f, 0, SEEK_SET) != 0) die("%s: cannot seek", path);
    DebugState s;
    s.cfg = header_get_config(f, path, kDebugMagic, h, 4, BT * 8 + BT * (int64_t)h[2] * 4 + 4);
    s.B = h[16]; s.T = h[17];
    if (s.T > s.cfg.maxT) die("%s: T=%d exceeds the model's max T=%d", path, s.T, s.cfg.maxT);
    s.tokens.resize(BT); s.targets.resize(BT);
    s.logits.resize(BT * s.cfg.V); s.grads.resize(num_params(s.cfg));
    fread_check(s.tokens.data(), sizeof(int32_t), BT, f, path);
    fread_check(s.targets.data(), sizeof(int32_t), BT, f, path);
    fread_check(s.logits.data(), sizeof(float), s.logits.size(), f, path);
    fread_check(&s.loss, sizeof(float), 1, f, path);
    fread_check(s.grads.data(), sizeof(float), s.grads.size(), f, path);
    fclose_check(f, path);
    for (int64_t i = 0; i < BT; i++)
        if (s.tokens[i] < 0 || s.tokens[i] >= s.cfg.V || s.targets[i] < 0 || s.targets[i] >= s.cfg.V)
            die("%s: token or target at index %lld is out of range for vocabulary size %d", path, (long long)i, s.cfg.V);
    return s;
}
