// Helpers of the tests that drive the train_phd binaries (test_train.cpp, test_train_gpu.cpp):
// their paths, scratch files, a small learnable shard, a tiny model's flags, log.txt lines.
#pragma once
#include <sys/stat.h>
#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>
#include "../data/checkpoint.h"
#include "../data/dataloader.h"
#include "test_util.h"

// The CLI tests spawn the g++ build of train_phd.cu: where nvcc is installed, ./train_phd loads
// cuBLAS at every start (0.35 s against 0.01 s), and its CPU path is the same source. One test
// trains through ./train_phd itself, the binary `make` builds.
static const char* const kBin = "./build/train_phd_cpu";
static const char* const kProductBin = "./train_phd";
// --device cuda through build/train_phd_emu: train_phd's CUDA path on the CPU emulation.
static const char* const kEmuBin = "./build/train_phd_emu";
static inline std::string tmp(const std::string& name) { return scratch_path("test-tmp", name); }

static inline bool exists(const std::string& path) {
    struct stat st;
    return stat(path.c_str(), &st) == 0;
}

// The largest relative error a --compare-cpu or --check-state run printed ("... rel X ok"
// per tensor): how far from its reference the run was, even when within its tolerance.
static inline double worst_printed_rel(const std::string& out) {
    double worst = 0;
    for (size_t at = out.find(" rel "); at != std::string::npos; at = out.find(" rel ", at + 1))
        worst = std::max(worst, std::atof(out.c_str() + at + 5));
    return worst;
}

// A file's bytes from offset `from` on (it must hold more than that).
static inline std::string file_bytes(const std::string& path, size_t from = 0) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream s;
    s << f.rdbuf();
    REQUIRE(s.str().size() > from);
    return s.str().substr(from);
}

// The checkpoint of `step` (model and training state) of the run in `from`, copied into the
// directory `to` (made), for a run there to resume from.
static inline void copy_checkpoint(const std::string& from, const std::string& to, int step) {
    mkdir(to.c_str(), 0755);
    char name[32];
    for (const char* kind : {"model", "state"}) {
        snprintf(name, sizeof name, "/%s_%08d.bin", kind, step);
        std::ifstream src(from + name, std::ios::binary);
        REQUIRE(src.good());
        std::ofstream(to + name, std::ios::binary) << src.rdbuf();
    }
}

// The model that the runs with a planted value start from: phd-2, V = 32 (so E and wout have
// Vp = 128 rows, 96 of them padding), D = 32 with H = 2: head size 16, which the GPU path runs
// in bf16 by default.
static inline Config planted_config() {
    Config c = tiny_config("phd-2", 32, 16);
    c.D = 32; c.F = 48; c.H = 2; c.Hkv = 1;
    REQUIRE(config_error(c).empty());
    return c;
}
// planted_config()'s fresh weights with parameter `at` set to `value`, saved as a
// checkpoint: its path.
static inline std::string planted_checkpoint(const std::string& name, size_t at, float value) {
    const Config c = planted_config();
    std::vector<float> p(num_params(c));
    init_params(c, p.data(), 4);
    p.at(at) = value;
    const std::string path = tmp(name);
    save_checkpoint(path.c_str(), c, p.data());
    return path;
}
// A parameter whose NaN leaves the loss finite and makes the gradient NaN: wout's first padded
// row. Its logit never counts, but the backward multiplies the row by that logit's zero
// gradient, and 0 * NaN = NaN reaches every gradient below the LM head.
static inline size_t padded_logit_row(const Config& c) { return param_tensors(c).back().offset + (size_t)c.V * c.D; }

// A shard of a small repetitive language (so that loss can fall), V = 32.
static inline std::string make_shard(const std::string& name, int n, uint64_t seed) {
    std::vector<uint32_t> t;
    Rng rng{seed};
    while ((int)t.size() < n) {
        for (uint32_t k = 1; k <= 6 && (int)t.size() < n; k++) t.push_back(k);
        t.push_back(7 + (uint32_t)(rng.next_u64() % 25));
    }
    std::string path = tmp(name);
    write_shard(path.c_str(), t.data(), (int64_t)t.size(), 32);
    return path;
}

// Training from `ckpt` through `cmd` (a train_phd binary and flags) into tmp(name), 3 steps
// with a checkpoint after each, stops at its first step: exit 1, the one line `error`, and no
// checkpoint at all.
static inline void stops_at_step_0(const std::string& cmd, const std::string& ckpt, const std::string& name, const std::string& error) {
    const std::string dir = tmp(name);
    std::string out;
    const int rc = run(cmd + " -b 2 -t 16 -x 3 -v 0 -s 0 -n 1 -e " + ckpt + " -i " + make_shard(name + ".bin", 500, 3) + " -o " + dir, &out);
    INFO(cmd << "\n" << out);
    CHECK(rc == 1);
    CHECK(out.find("\n" + error + "\n") != std::string::npos);
    CHECK(out.find("error:") == out.rfind("error:"));
    for (int step = 1; step <= 3; step++) CHECK(!exists(dir + "/model_0000000" + std::to_string(step) + ".bin"));
}

static inline std::string tiny_flags() {
    return " --vocab 32 --layers 2 --dim 32 --heads 4 --kv-heads 2 --ffn 48 -b 2 -t 16 --threads 2 ";
}

static inline std::vector<std::string> train_losses(const std::string& log) {
    std::ifstream f(log);
    std::vector<std::string> l;
    std::string line;
    while (std::getline(f, line))
        if (line.find(" train ") != std::string::npos) l.push_back(line);
    return l;
}

// Lines of log.txt holding kind (" train " or " val "): its last number.
static inline std::vector<double> log_values(const std::string& log, const char* kind) {
    std::ifstream f(log);
    std::vector<double> v;
    std::string line;
    while (std::getline(f, line))
        if (line.find(kind) != std::string::npos) v.push_back(std::stod(line.substr(line.rfind(' '))));
    return v;
}

// tiny_flags() on one thread: these runs time nothing, and two OpenMP threads that spin on a
// loaded machine (make test runs suites side by side) take seconds over a few steps.
static inline std::string one_thread_flags() { return tiny_flags() + "--threads 1 "; }

// Each printed step line of a run's output, by its 1-based step number.
static inline std::vector<std::string> step_lines(const std::string& out) {
    std::vector<std::string> lines(1);
    std::istringstream in(out);
    for (std::string l; std::getline(in, l);)
        if (l.rfind("step ", 0) == 0 && l.find(" | loss ") != std::string::npos) lines.push_back(l);
    return lines;
}
