// train_phd's CUDA path, driven through build/train_phd_emu (train_phd over the CUDA
// emulation): --compare-cpu, --check-state, training that follows the CPU and resumes on it,
// GPU memory errors, generation, the step line's MFU, and --dtype bf16.
#include <sys/stat.h>
#include <algorithm>
#include <fstream>
#include "train_util.h"

TEST_CASE("--device cuda (emulated): --compare-cpu, --check-state, training that follows the CPU and resumes on it") {
    std::string out, shard = make_shard("cuda.bin", 3000, 9);
    std::string model = tiny_flags() + "--variant phd-cswa-3-4-5 -i " + shard + " ";
    // One step on both engines from the same weights.
    int rc = run(std::string(kEmuBin) + model + "--compare-cpu 1", &out);
    INFO(out);
    CHECK(rc == 0);
    CHECK(out.find("compare-cpu: OK") != std::string::npos);
    CHECK(out.find("dlayer1.w2") != std::string::npos);
    rc = run(std::string(kEmuBin) + model + "--compare-cpu 1 --logits-chunk 5", &out);  // it reads a batch's whole logits
    CHECK(rc == 1);
    CHECK(out.find("--logits-chunk: --compare-cpu and --check-state compare a batch's whole logits") != std::string::npos);
    // --tf32 1 at hd = 16: the tensor-core attention kernels and TF32 GEMMs,
    // within TF32 precision of the CPU and not within fp32's.
    const std::string tf32 = std::string(kEmuBin) + model + "--dim 64 --tf32 1 --compare-cpu 1 --check-tol ";
    rc = run(tf32 + "3e-3", &out);
    INFO(out);
    CHECK(rc == 0);
    CHECK(run(tf32 + "1e-6", &out) == 1);
    CHECK(out.find("compare-cpu: FAILED") != std::string::npos);
    // The PyTorch fixture on the GPU path.
    rc = run(std::string(kEmuBin) + " --device cuda -e test/fixtures/phd-cswa-3-2-2.ckpt --check-state test/fixtures/phd-cswa-3-2-2.state", &out);
    CHECK(rc == 0);
    CHECK(out.find("on cuda") != std::string::npos);
    // 4 steps on the GPU path, checkpoint at 2; the same 4 on the CPU; the GPU run resumed on the CPU.
    std::string g = tmp("cuda-run"), cpu = tmp("cpu-run"), mixed = tmp("mixed-run");
    std::string train = model + "-x 4 -u 1 -v 0 -s 2 -g 3 -n 2 ";  // samples at step 2: the GPU decoder inside training
    REQUIRE(run(std::string(kEmuBin) + train + "--device cuda -o " + g, &out) == 0);
    CHECK(out.find("on cuda") != std::string::npos);
    CHECK(out.find("sample:") != std::string::npos);
    REQUIRE(run(std::string(kBin) + train + "--device cpu -o " + cpu, &out) == 0);
    copy_checkpoint(g, mixed, 2);
    REQUIRE(run(std::string(kBin) + train + "--device cpu -y 1 -o " + mixed, &out) == 0);
    std::vector<std::string> lg = train_losses(g + "/log.txt"), lc = train_losses(cpu + "/log.txt"), lm = train_losses(mixed + "/log.txt");
    REQUIRE((lg.size() == 4 && lc.size() == 4 && lm.size() == 2));
    auto value = [](const std::string& line) { return std::stod(line.substr(line.rfind(' '))); };
    for (int i = 0; i < 4; i++) {
        INFO("step " << i << ": cuda " << lg[i] << " | cpu " << lc[i]);
        CHECK(std::fabs(value(lg[i]) - value(lc[i])) <= 1e-4 * value(lc[i]));
    }
    for (int i = 0; i < 2; i++) {
        INFO("resumed step " << i + 2 << ": " << lm[i] << " | cuda " << lg[i + 2]);
        CHECK(std::fabs(value(lm[i]) - value(lg[i + 2])) <= 1e-4 * value(lg[i + 2]));
    }
    // Generation with the GPU decoder: the CPU decoder's greedy tokens and cache report.
    std::string gen = std::string(kEmuBin) + " -e " + g + "/model_00000002.bin --generate 8 --prompt-ids '3 1 4 1 5 9' --temperature 0 ",
                on_cpu;
    REQUIRE(run(gen + "--device cpu", &on_cpu) == 0);
    REQUIRE(run(gen + "--device cuda", &out) == 0);
    INFO(on_cpu << "\n" << out);
    CHECK(out.substr(0, out.find('\n')) == on_cpu.substr(0, on_cpu.find('\n')));
    CHECK(out.find("on cuda") != std::string::npos);
    auto cache_line = [](const std::string& o) { return o.substr(o.find("KV cache after")); };
    CHECK(cache_line(out) == cache_line(on_cpu));
}

// The process's cuBLASLt workspace (kernels/gemm.cuh's Gemm::kWorkspace), which the GPU path
// counts beside the parameters (with another size there, the cases below stop at the wrong
// line and fail).
static const size_t kGemmWorkspace = 32u << 20;

TEST_CASE("--device cuda (emulated): what does not fit in GPU memory gets one clear error line") {
    // The emulated device gets PHD_EMU_DEVICE_MEMORY bytes; the model of tiny_flags().
    Config c = tiny_config("phd-cswa-3-4-5", 32, 16);
    c.D = 32; c.F = 48;
    const size_t P = num_params(c) * sizeof(float);
    std::string shard = make_shard("oom.bin", 3000, 9), out;
    struct Case { size_t bytes; std::string expect; };
    const size_t W = kGemmWorkspace;
    for (const Case& k : {Case{W, "GPU memory: parameters and gradients need"}, Case{W + 3 * P, "GPU memory: AdamW moments need"},
                          Case{W + 4 * P + 65536, "GPU memory: activations for B=2 T=16 need"}}) {
        int rc = run("PHD_EMU_DEVICE_MEMORY=" + std::to_string(k.bytes) + " " + kEmuBin + tiny_flags() +
                         "--variant phd-cswa-3-4-5 --device cuda -x 1 -v 0 -s 0 -i " + shard + " -o " + tmp("oom"), &out);
        INFO(k.bytes << " bytes -> " << out);
        CHECK(rc == 1);
        CHECK(out.find(k.expect) != std::string::npos);
        CHECK(out.find("MiB free of") != std::string::npos);
    }
}

TEST_CASE("--device cuda (emulated): generation allocates no gradients or AdamW moments") {
    // A device with room for the parameters, their bf16 copy (hd 16: bf16 by default) and the
    // decoder, not for the gradients too.
    Config c = tiny_config("phd-cswa-3-4-5", 32, 16);
    c.D = 64; c.F = 128;
    const size_t P = num_params(c) * sizeof(float), limit = kGemmWorkspace + P + P / 2 + 160 * 1024;
    REQUIRE(limit < kGemmWorkspace + 2 * P);
    std::string dir = tmp("gen-mem"), out, model = tiny_flags() + "--dim 64 --ffn 128 --variant phd-cswa-3-4-5 ";
    REQUIRE(run(std::string(kBin) + model + "-x 1 -v 0 -s 0 -i " + make_shard("gen-mem.bin", 3000, 4) + " -o " + dir, &out) == 0);
    const std::string env = "PHD_EMU_DEVICE_MEMORY=" + std::to_string(limit) + " ";
    int rc = run(env + kEmuBin + " --device cuda -e " + dir + "/model_00000001.bin --generate 4 --prompt-ids '1 2 3' --temperature 0", &out);
    INFO(out);
    CHECK(rc == 0);
    CHECK(out.find("on cuda") != std::string::npos);
    // The same device is too small to train this model.
    rc = run(env + kEmuBin + model + "--device cuda -x 1 -v 0 -s 0 -i " + make_shard("gen-mem.bin", 3000, 4) + " -o " + tmp("gen-mem-train"), &out);
    INFO(out);
    CHECK(rc == 1);
    CHECK(out.find("GPU memory: parameters and gradients need") != std::string::npos);
}

TEST_CASE("--generate on --device cuda (emulated): bf16 by default where the head size allows, half the fp32 cache bytes; --dtype fp32") {
    std::string out, dir = tmp("gen-bf16"), shard = make_shard("gen-bf16.bin", 3000, 13);
    const std::string train = tiny_flags() + "--dim 64 --heads 4 --variant phd-cswa-3-4-5 -x 1 -v 0 -s 0 -i " + shard + " -o " + dir;
    REQUIRE(run(std::string(kBin) + train, &out) == 0);
    const std::string gen = std::string(kEmuBin) + " --device cuda -e " + dir + "/model_00000001.bin --generate 6 --prompt-ids '1 2 3' ";
    std::string f32;
    REQUIRE(run(gen, &out) == 0);  // hd 16: bf16
    REQUIRE(run(gen + "--dtype fp32", &f32) == 0);
    INFO(out << "\n" << f32);
    CHECK(out.find("on cuda in bf16 weights, matmul inputs and KV cache; fp32 sums and logits") != std::string::npos);
    CHECK(f32.find("on cuda in fp32 (") != std::string::npos);
    // The same entries, at 2 bytes a value instead of 4.
    auto kib = [](const std::string& o, const char* unit) {
        const size_t at = o.find(unit);
        return at == std::string::npos ? -1.0 : std::stod(o.substr(o.rfind(' ', at - 2) + 1));
    };
    auto entries = [](const std::string& o) { return o.substr(o.find("KV cache after"), o.find(" entries/layer") - o.find("KV cache after")); };
    CHECK(entries(out) == entries(f32));
    CHECK(kib(f32, " KiB/layer") > 0);
    CHECK(std::fabs(kib(out, " KiB/layer") * 2 - kib(f32, " KiB/layer")) <= 0.1);  // printed to 0.1 KiB
}

TEST_CASE("--device cuda (emulated): a NaN loss or gradient norm stops training with a clear error, no checkpoint, bf16 and fp32") {
    const Config c = planted_config();  // head size 16: bf16 by default
    const std::string loss = planted_checkpoint("gpu-nan-loss.ckpt", 3 * c.D + 4, NAN),
                      norm = planted_checkpoint("gpu-nan-norm.ckpt", padded_logit_row(c), NAN);
    for (const char* dtype : {"bf16", "fp32"}) {
        const std::string cmd = std::string(kEmuBin) + " --device cuda --dtype " + dtype;
        stops_at_step_0(cmd, loss, std::string("gpu-nan-loss-") + dtype, "error: training loss is NaN at step 0; no checkpoint written for this step");
        stops_at_step_0(cmd, norm, std::string("gpu-nan-norm-") + dtype, "error: gradient norm is NaN at step 0; no checkpoint written for this step");
    }
}

TEST_CASE("the step line shows MFU on the GPU (emulated: peak unknown, '-') and not on the CPU") {
    std::string shard = make_shard("mfu.bin", 3000, 3), out;
    const std::string flags = one_thread_flags() + "-i " + shard + " -x 2 -v 0 -s 0 -o " + tmp("mfu");
    REQUIRE(run(std::string(kEmuBin) + flags + " --device cuda", &out) == 0);
    INFO(out);
    const std::vector<std::string> gpu = step_lines(out);
    REQUIRE(gpu.size() == 3);
    for (int i = 1; i <= 2; i++) CHECK(gpu[i].find(" | MFU ") != std::string::npos);
    CHECK(out.find("MFU: shown as -, this GPU's peak is unknown") != std::string::npos);  // the emulation describes no hardware
    for (std::string bin : {std::string(kBin), std::string(kEmuBin) + " --device cpu"}) {
        REQUIRE(run(bin + flags, &out) == 0);
        CHECK(step_lines(out).size() == 3);
        CHECK(out.find("MFU") == std::string::npos);
    }
}

TEST_CASE("--dtype bf16 (emulated): matmuls and attention on bf16 tensor cores within bf16 precision of the CPU, every variant") {
    std::string out, shard = make_shard("bf16.bin", 3000, 9);
    // hd = 16 (D = 64, H = 4): the bf16 kernels' smallest head size, every variant; and hd = 64
    // (D = 128, H = 2 sharing one KV head), one layer, T = 32: 96 rows, two tiles of keys.
    struct Model { std::string variant, flags; };
    for (const Model& m : {Model{"vanilla", "--dim 64"}, Model{"phd-3", "--dim 64"}, Model{"phd-swa-3-4", "--dim 64"},
                           Model{"phd-cswa-3-4-5", "--dim 64"}, Model{"naive-2", "--dim 64"},
                           Model{"phd-cswa-3-4-5", "--dim 128 --heads 2 --kv-heads 1 --layers 1 -t 32"}}) {
        const std::string cmd = std::string(kEmuBin) + tiny_flags() + m.flags + " --variant " + m.variant + " -i " + shard +
                                " --device cuda --dtype bf16 --compare-cpu 1 --check-tol ";
        INFO(m.variant << " " << m.flags);
        // Every tensor within 2e-2 of its scale (seen: worst 7.5e-3, dlayer1.w1: bf16 rounds
        // each matmul's inputs, P, dS and o at 2^-9 relative); and not all within 1e-4, so
        // the bf16 kernels really ran (fp32: ~1e-6). The failure itself: the TF32 case above.
        int rc = run(cmd + "2e-2", &out);
        INFO(out);
        CHECK(rc == 0);
        CHECK(worst_printed_rel(out) > 1e-4);
    }
    // Bad uses: one line naming the flag, exit 1.
    struct Case { std::string args, expect; };
    for (const Case& k : {Case{"--dtype fp16 --device cuda", "--dtype: expected auto, fp32 or bf16, got 'fp16'"},
                          Case{"--dtype bf16 --tf32 1 --device cuda", "--tf32 1: TF32 is for --dtype fp32's matmuls"},
                          Case{"--dtype bf16 --device cpu", "--dtype bf16: bf16 tensor cores are the GPU's"},
                          Case{"--dtype bf16 --device cuda", "--dtype bf16: head size 8 has no bf16 attention kernel"}}) {
        INFO(k.args);
        CHECK(run(std::string(kEmuBin) + tiny_flags() + k.args + " -i " + shard + " -x 1 -o " + tmp("bf16-bad"), &out) == 1);
        CHECK(out.find(k.expect) != std::string::npos);
        CHECK(std::count(out.begin(), out.end(), '\n') == 1);
    }
}

TEST_CASE("--dtype bf16 (emulated): 40 training steps follow the fp32 run's validation losses to 2 %") {
    std::string out, shard = make_shard("bf16-train.bin", 4000, 10);
    const std::string flags = std::string(kEmuBin) + tiny_flags() + "--dim 64 --variant phd-cswa-3-4-5 -i " + shard + " -j " + shard +
                              " --device cuda -x 40 -l 3e-3 -u 4 -v 10 -m 2 -s 0 -n 0 ";
    const std::string f32 = tmp("bf16-run-fp32"), b16 = tmp("bf16-run-bf16");
    REQUIRE(run(flags + "--dtype fp32 -o " + f32, &out) == 0);
    REQUIRE(run(flags + "--dtype bf16 -o " + b16, &out) == 0);
    CHECK(out.find("(bf16 tensor cores: matmuls and attention") != std::string::npos);
    const std::vector<double> a = log_values(f32 + "/log.txt", " val "), b = log_values(b16 + "/log.txt", " val ");
    REQUIRE(a.size() == 5);  // steps 0, 10, 20, 30, 39
    REQUIRE(b.size() == a.size());
    CHECK(a.back() < 0.8 * a.front());  // the model learns: the comparison is of a real curve
    for (size_t i = 0; i < a.size(); i++) {
        INFO("validation " << i << ": fp32 " << a[i] << ", bf16 " << b[i]);
        CHECK(std::fabs(b[i] - a[i]) <= 0.02 * a[i]);
    }
}

TEST_CASE("--dtype auto (emulated): bf16 on the GPU where the head size has a kernel, unless --tf32 1; fp32 elsewhere") {
    std::string out, shard = make_shard("auto-dtype.bin", 3000, 11);
    const std::string flags = one_thread_flags() + "-i " + shard + " -x 1 -v 0 -s 0 -o " + tmp("auto-dtype") + " ";
    struct Case { std::string args, expect; };
    for (const Case& k : {Case{"--dim 64 --device cuda", "(bf16 tensor cores: matmuls and attention"},  // hd 16
                          Case{"--dim 64 --device cuda --tf32 1", "(TF32 tensor cores)"},
                          Case{"--dim 64 --device cuda --dtype fp32", "(fp32; --dtype bf16 or --tf32 1: tensor cores)"},
                          Case{"--device cuda", "(fp32; --dtype bf16 or --tf32 1: tensor cores)"},  // hd 8: no bf16 kernel
                          Case{"--dim 384 --device cuda", "(fp32; --dtype bf16 or --tf32 1: tensor cores)"},  // hd 96 (paper-550m's): none
                          Case{"--dim 64 --device cpu", "on cpu\n"}}) {
        INFO(k.args);
        REQUIRE(run(std::string(kEmuBin) + flags + k.args, &out) == 0);
        INFO(out);
        CHECK(out.find(k.expect) != std::string::npos);
    }
    // --compare-cpu follows the default too, with bf16's tolerance.
    REQUIRE(run(std::string(kEmuBin) + tiny_flags() + "--dim 64 -i " + shard + " --compare-cpu 1", &out) == 0);
    CHECK(out.find("in bf16, tolerance 2.0e-02") != std::string::npos);
}

TEST_CASE("--dtype bf16 (emulated): resume is bit-identical, the bf16 weights made anew from the checkpoint's fp32 ones") {
    std::string out, shard = make_shard("bf16-resume.bin", 3000, 12);
    const std::string a = tmp("bf16-resume-a"), b = tmp("bf16-resume-b");
    const std::string flags = std::string(kEmuBin) + one_thread_flags() + "--dim 64 --variant phd-swa-2-3 -i " + shard +
                              " --device cuda --dtype bf16 -x 4 -u 1 -v 0 -s 0 -n 2 ";
    REQUIRE(run(flags + "-o " + a, &out) == 0);
    const std::vector<std::string> straight = train_losses(a + "/log.txt");
    REQUIRE(straight.size() == 4);
    copy_checkpoint(a, b, 2);
    REQUIRE(run(flags + "-y 1 -o " + b, &out) == 0);
    const std::vector<std::string> resumed = train_losses(b + "/log.txt");
    REQUIRE(resumed.size() == 2);
    for (int i = 0; i < 2; i++) CHECK(resumed[i] == straight[2 + i]);  // exact floats: stale bf16 weights would differ
    const std::string final_a = file_bytes(a + "/model_00000004.bin");
    CHECK(final_a.size() > 1024);  // more than the header
    CHECK(final_a == file_bytes(b + "/model_00000004.bin"));
}

TEST_CASE("--device cuda (emulated): the step as a CUDA graph, launched kernel by kernel (--graph 0), updating after the host's look, or recomputing: the same bits") {
    // One GPU replays each step as a graph (captured at the second step, the first warming up)
    // that reads its tokens and AdamW's learning rate and bias corrections from pinned memory
    // the host fills each step: a graph that replayed the second step's would drift from the
    // run launched kernel by kernel. Two micro-batches a step, validation's forwards between
    // steps. With --skip-update-z (a Z no step reaches) the graph holds no update: the host
    // reads the loss and the norm first and then updates. The same weights every way.
    std::string out, shard = make_shard("graph-step.bin", 3000, 13), val = make_shard("graph-step-val.bin", 600, 14);
    const std::string a = tmp("graph-a"), b = tmp("graph-b"), cc = tmp("graph-c");
    const std::string flags = std::string(kEmuBin) + one_thread_flags() + "--dim 64 --variant phd-cswa-2-3-2 -i " + shard + " -j " + val +
                              " --device cuda --dtype bf16 -d 64 -x 5 -u 1 -v 2 -m 1 -s 0 -l 1e-2 ";
    REQUIRE(run(flags + "-o " + a, &out) == 0);
    CHECK(out.find("x 2 micro-batches") != std::string::npos);
    REQUIRE(run(flags + "--graph 0 -o " + b, &out) == 0);
    REQUIRE(run(flags + "--skip-update-z 1000 -o " + cc, &out) == 0);
    CHECK(out.find("skipped 0 of 5 updates") != std::string::npos);
    const std::string d = tmp("graph-d");  // and with the layers recomputed in the backward (model.h's Activations::point)
    REQUIRE(run(flags + "--recompute 2 -o " + d, &out) == 0);
    CHECK(out.find("--recompute 2, --logits-chunk 0)") != std::string::npos);
    const std::vector<std::string> la = train_losses(a + "/log.txt");
    CHECK(la.size() == 5);
    CHECK(la == train_losses(b + "/log.txt"));
    CHECK(la == train_losses(cc + "/log.txt"));
    const std::string final_a = file_bytes(a + "/model_00000005.bin");
    CHECK(final_a.size() > 1024);
    CHECK(final_a == file_bytes(b + "/model_00000005.bin"));
    CHECK(final_a == file_bytes(cc + "/model_00000005.bin"));
    CHECK(final_a == file_bytes(d + "/model_00000005.bin"));
    // The head a chunk of 5 rows at a time (--logits-chunk): its graph and the run launched
    // kernel by kernel give the same bits; against the unchunked run, the same first loss (the
    // emulated GEMMs give the same logits, row by row), then wout's gradient, summed chunk by
    // chunk, parts the runs in their last bits.
    const std::string e = tmp("graph-e"), e0 = tmp("graph-e0");
    REQUIRE(run(flags + "--logits-chunk 5 -o " + e, &out) == 0);
    CHECK(out.find("--logits-chunk 5)") != std::string::npos);
    REQUIRE(run(flags + "--logits-chunk 5 --graph 0 -o " + e0, &out) == 0);
    const std::vector<std::string> le = train_losses(e + "/log.txt");
    REQUIRE(le.size() == 5);
    CHECK(le == train_losses(e0 + "/log.txt"));
    CHECK(file_bytes(e + "/model_00000005.bin") == file_bytes(e0 + "/model_00000005.bin"));
    CHECK(le[0] == la[0]);
    const std::vector<double> va = log_values(a + "/log.txt", " train "), ve = log_values(e + "/log.txt", " train ");
    REQUIRE(ve.size() == va.size());
    for (size_t i = 1; i < va.size(); i++) CHECK(std::fabs(ve[i] - va[i]) <= 1e-4 * std::fabs(va[i]));
    CHECK(run(flags + "--logits-chunk 5 --dtype fp32 -o " + tmp("graph-f"), &out) == 1);
    CHECK(out.find("--logits-chunk: saves the GPU's bf16 logits, and this run is in fp32") != std::string::npos);
}
