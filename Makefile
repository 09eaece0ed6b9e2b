# phd: `make` builds train_phd (with nvcc when it is installed, else as C++ with g++),
# `make test` runs every test, `make train` prepares data and trains (see README).
CXX      ?= g++
CXXFLAGS ?= -O3 -march=native
WARN     := -Wall -Wextra -Werror
HOSTFLAGS = -std=c++17 $(CXXFLAGS) -fopenmp $(WARN)
NVCC     ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
# sm_90 (H100/H200) and sm_80 (A100)
NVCC_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
NVCCFLAGS ?= -O3 -std=c++17 $(NVCC_ARCH)
HEADERS  := $(wildcard *.h kernels/*.h kernels/*.cuh data/*.h dev/*.h test/cuda_emu*.h)
# GPT-2 text prompts in train_phd need PCRE2 (dev/setup.sh installs it); built without otherwise.
PCRE2_FLAGS := $(if $(wildcard /usr/include/pcre2.h),-DPHD_PCRE2)
PCRE2_LIBS  := $(if $(wildcard /usr/include/pcre2.h),-lpcre2-8)
# train_phd runs under mpirun (data parallel, kernels/dist.h) when OpenMPI's mpicc and mpi.h are
# here (Debian's libopenmpi-dev and openmpi-bin: dev/setup.sh installs them); else it is built for
# one process. The nvcc build talks between GPUs with NCCL: MPI there also needs nccl.h.
MPICC     := $(shell command -v mpicc 2>/dev/null)
MPI_INC   := $(if $(MPICC),$(shell $(MPICC) --showme:incdirs 2>/dev/null))
MPI_ON    := $(if $(wildcard $(addsuffix /mpi.h,$(MPI_INC))),1)
# MPI's C API only: its C++ bindings do not compile under -Wextra -Werror.
MPI_FLAGS := $(if $(MPI_ON),-DPHD_MPI -DOMPI_SKIP_MPICXX -DMPICH_SKIP_MPICXX $(addprefix -I,$(MPI_INC)))
MPI_LIBS  := $(if $(MPI_ON),$(addprefix -L,$(shell $(MPICC) --showme:libdirs)) $(addprefix -l,$(shell $(MPICC) --showme:libs)))
NCCL_ON   := $(and $(MPI_ON),$(NVCC),$(wildcard /usr/include/nccl.h $(dir $(NVCC))../include/nccl.h))
NVCC_MPI_FLAGS := $(if $(NCCL_ON),$(MPI_FLAGS))
NVCC_MPI_LIBS  := $(if $(NCCL_ON),$(MPI_LIBS) -lnccl)
# Where no GPU answers, the native binaries that only a GPU can run are compiled for sm_90
# alone: the tests and the benchmarks to PTX (nvcc's every check but ptxas's, whose report
# comes from train_phd's build, which holds every kernel) with their host and device code
# unoptimised (the emulated builds compile the host code optimised; nothing runs this PTX, and
# cicc's -O0 saves a third of the compile). They are built for every architecture, optimised,
# once a GPU is here. train_phd
# itself keeps sm_90's machine code and carries sm_80's as PTX, which an A100's driver
# compiles at the first start (and caches): a quarter of its compile, in every CI run. Build
# on the GPU's machine, or pass NVCC_ARCH, for both as machine code.
GPUS := $(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU')
ifeq ($(GPUS),0)
train_phd: NVCC_ARCH := -gencode arch=compute_80,code=compute_80 -gencode arch=compute_90,code=sm_90
build/test_gpu_native build/bench_gpu build/bench_decode_gpu: NVCC_ARCH := -gencode arch=compute_90,code=compute_90
build/test_gpu_native build/bench_gpu build/bench_decode_gpu: NVCCFLAGS := -O0 -Xcicc -O0 -std=c++17 $(NVCC_ARCH)
build/test_gpu_native build/bench_gpu build/bench_decode_gpu: CXXFLAGS := -O0
endif
# What the binaries were built with follows what this machine has: the line below changes
# when PCRE2, MPI, NCCL, nvcc or a GPU come or go (dev/setup.sh installs the first two), and every
# binary depends on it, so that they are rebuilt then.
FEATURES := pcre2=$(if $(PCRE2_FLAGS),1,0) mpi=$(if $(MPI_ON),1,0) nccl=$(if $(NCCL_ON),1,0) nvcc=$(if $(NVCC),1,0) gpus=$(GPUS)
$(shell mkdir -p build && { [ "$$(cat build/features 2>/dev/null)" = "$(FEATURES)" ] || echo "$(FEATURES)" > build/features; })
HEADERS += build/features
TEST_SRC := $(wildcard test/*.cpp)
TEST_HDR := $(wildcard test/*.h)

PYTHON_TORCH := /usr/bin/python3

.PHONY: all setup test test-gpu test-tsan test-asan test-emu test-reference fixtures bench bench-gpu clean train kjv-shards evals
all: train_phd

# nvcc with the host flags: the rule's first prerequisite to $@
NVCC_BUILD = $(NVCC) $(NVCCFLAGS) -Xcompiler "$(subst $() ,$(comma),$(strip $(CXXFLAGS) -fopenmp $(WARN)))"

# The nvcc build of train_phd (every kernel is in a header it includes) keeps what ptxas says
# of each kernel, and the PTX (for __launch_bounds__), in build/ptxas/ (dev/ptxas_report.sh
# reads them there instead of compiling again); the rest of nvcc's output goes to the
# terminal as usual.
# A failed build leaves no log, so that the report compiles the source and fails itself.
PTXAS_OUT = build/ptxas/$(notdir $@)
PTXAS_LOG = --keep --keep-dir $(PTXAS_OUT).keep -Xptxas -v 2> $(PTXAS_OUT).log; rc=$$?; \
            grep -v '^ptxas info\|bytes stack frame' $(PTXAS_OUT).log >&2; cat $(PTXAS_OUT).keep/*.ptx > $(PTXAS_OUT).ptx 2>/dev/null; \
            rm -rf $(PTXAS_OUT).keep; [ $$rc -eq 0 ] || rm -f $(PTXAS_OUT).log; exit $$rc
PTXAS_DIR = @rm -rf $(PTXAS_OUT).keep && mkdir -p $(PTXAS_OUT).keep

ifneq ($(NVCC),)
train_phd: train_phd.cu $(HEADERS)
	@rm -f $@
	$(PTXAS_DIR)
	$(NVCC_BUILD) $(PCRE2_FLAGS) $(NVCC_MPI_FLAGS) $< -o $@ -lcublasLt -lgomp $(PCRE2_LIBS) $(NVCC_MPI_LIBS) $(PTXAS_LOG)
else
train_phd: build/train_phd_cpu
	cp $< $@
endif
comma := ,

# The same source as plain C++: the CPU-only build, always compiled by `make test` too.
build/train_phd_cpu: train_phd.cu $(HEADERS)
	@mkdir -p build && rm -f $@
	$(CXX) $(HOSTFLAGS) $(PCRE2_FLAGS) $(MPI_FLAGS) -x c++ $< -o $@ $(PCRE2_LIBS) $(MPI_LIBS)

CPU_TESTS := test/test_main.cpp test/test_model.cpp test/test_train.cpp test/test_train_gpu.cpp test/test_fixtures.cpp test/test_decode.cpp
# Binaries that only tests run are built at -O1: half the compile time of -O3, and about as
# fast where `make test` spends its time (spawned binaries, the emulation's fibers: 15-20 %
# slower there, less than the build time saved).
TEST_OPT := -O1
# train_phd with its CUDA path running on the CPU emulation: the tests drive --device cuda with it.
build/train_phd_emu: train_phd.cu $(HEADERS)
	@mkdir -p build && rm -f $@
	$(CXX) $(HOSTFLAGS) $(TEST_OPT) -pthread -DPHD_EMULATE_GPU $(PCRE2_FLAGS) $(MPI_FLAGS) -x c++ $< -o $@ $(PCRE2_LIBS) $(MPI_LIBS)

# Each test binary compiles one file that includes its sources (test/cpu_tests.cpp,
# test/gpu_tests.cu): the engine's headers once, not once per source.
build/test_cpu: test/cpu_tests.cpp $(CPU_TESTS) $(TEST_HDR) $(HEADERS)
	@mkdir -p build && rm -f $@
	$(CXX) $(HOSTFLAGS) $(TEST_OPT) $< -o $@

# GPU tests, one source built four ways: emulated on the CPU (test/cuda_emu.h), the same
# under ThreadSanitizer and AddressSanitizer, and natively with nvcc (skips without a GPU).
# The sanitizers' builds keep line tables only (-g1): their reports still name file and line,
# and full debug information made these builds twice as slow.
GPU_TEST_SRC  := test/test_gpu.cu test/test_gpu_mma.cu test/test_gpu_kernels.cu test/test_gpu_decode.cu test/test_gpu_emu.cu
GPU_TEST_DEPS := test/gpu_tests.cu test/test_main.cpp $(GPU_TEST_SRC) $(TEST_HDR) $(HEADERS)
EMU_FLAGS = -std=c++17 $(WARN) -fopenmp -pthread -DPHD_EMULATE_GPU -x c++ test/gpu_tests.cu -o $@
build/test_gpu_emu: $(GPU_TEST_DEPS)
	@mkdir -p build && rm -f $@
	$(CXX) $(EMU_FLAGS) $(CXXFLAGS) $(TEST_OPT)
# ThreadSanitizer's build is clang's (dev/setup.sh installs it): LLVM 14's runtime runs the
# emulation's fibers 2-3 times faster than GCC 12's and reports races GCC's misses (a
# cp.async refill under a reader). clang announces the sanitizer with __has_feature, GCC with
# the __SANITIZE_THREAD__ the emulation reads; `omp simd` loops that TSan keeps scalar are no error.
TSAN_CXX ?= clang++
build/test_gpu_tsan: $(GPU_TEST_DEPS)
	@mkdir -p build && rm -f $@
	$(TSAN_CXX) $(EMU_FLAGS) -O1 -g1 -fsanitize=thread -D__SANITIZE_THREAD__=1 -Wno-pass-failed
# AddressSanitizer, and UBSan's alignment check: a GPU faults on a misaligned vector access
# ("misaligned address"), the x86 the emulation runs on would not.
build/test_gpu_asan: $(GPU_TEST_DEPS)
	@mkdir -p build && rm -f $@
	$(CXX) $(EMU_FLAGS) -O1 -g1 -fsanitize=address,alignment -fno-sanitize-recover=alignment -fno-omit-frame-pointer
build/test_gpu_native: $(GPU_TEST_DEPS)
	@mkdir -p build && rm -f $@
	$(NVCC) $(NVCCFLAGS) $(DOCTEST_INC) -DPHD_NATIVE_GPU -Xcompiler "$(subst $() ,$(comma),$(strip -fopenmp $(WARN)))" -x cu test/gpu_tests.cu -o $@ -lcublasLt -lgomp
# doctest from .deps/ where the system has none (a GPU machine without network: dev/gpu_run.sh).
DOCTEST_INC := $(if $(wildcard /usr/include/doctest/doctest.h),,$(if $(wildcard .deps/doctest/doctest.h),-I.deps))

# The data pipeline (GPT-2 BPE needs PCRE2 and nlohmann-json: dev/setup.sh installs them).
DATA_HDR := $(wildcard data/*.h) kernels/utils.h
build/prepare: data/prepare.cpp $(DATA_HDR)
	@mkdir -p build && rm -f $@
	$(CXX) $(HOSTFLAGS) $< -o $@ -lpcre2-8

build/test_data: test/test_main.cpp test/test_data.cpp $(TEST_HDR) $(DATA_HDR)
	@mkdir -p build && rm -f $@
	$(CXX) $(HOSTFLAGS) $(TEST_OPT) test/test_main.cpp test/test_data.cpp -o $@ -lpcre2-8

# Every suite (C++ tests; the PyTorch reference's self-tests). test/run_tests.sh builds the
# binaries (a make of its own for each, past failures: a rule that fails leaves no binary,
# so its suite counts as failed instead of running an old one) and runs each suite as soon
# as what it needs is built, as many jobs at once as there are cores, longest first, and
# prints the total last: "total: N passed, M failed, K skipped".
# The set-up first, then the builds in makes of their own, which see what it installed.
# SETUP=0 skips it (a GPU machine without network, handed what it needs: dev/gpu_run.sh).
SETUP ?= 1
setup:
	@[ "$(SETUP)" = 0 ] || bash dev/setup.sh
test: setup
	@./test/run_tests.sh

# The GPU tests alone, natively (needs nvcc and a GPU) and under the sanitizers.
test-gpu: build/test_gpu_native
	./build/test_gpu_native
test-tsan: build/test_gpu_tsan
	OMP_NUM_THREADS=1 ./build/test_gpu_tsan
test-asan: build/test_gpu_asan
	./build/test_gpu_asan
# The GPU tests on the plain emulation: make test's cases without a sanitizer, the quickest
# run of them (make test runs them under ASan and TSan instead).
test-emu: build/test_gpu_emu
	./build/test_gpu_emu

# The PyTorch reference alone (needs Debian's python3-torch).
test-reference:
	$(PYTHON_TORCH) dev/phd_reference.py selftest

# Regenerates test/fixtures/ from the PyTorch reference.
fixtures:
	$(PYTHON_TORCH) dev/phd_reference.py write test/fixtures

build/bench_cpu: dev/bench_cpu.cpp $(HEADERS)
	@mkdir -p build && rm -f $@
	$(CXX) $(HOSTFLAGS) $< -o $@

build/bench_decode: dev/bench_decode.cu $(HEADERS)
	@mkdir -p build && rm -f $@
	$(CXX) $(HOSTFLAGS) -x c++ $< -o $@

bench: build/bench_cpu build/bench_decode
	OMP_NUM_THREADS=2 ./build/bench_cpu
	OMP_NUM_THREADS=2 ./build/bench_decode

# GPU benchmarks (nvcc and a GPU): the kernel lab and training steps, then KV-cache inference.
build/bench_gpu: dev/bench_gpu.cu $(HEADERS)
	@mkdir -p build && rm -f $@
	$(NVCC_BUILD) $< -o $@ -lcublasLt -lgomp
# Every kernel's registers, static shared memory and __launch_bounds__, for the emulation's
# launch checks (PHD_EMU_KERNELS, test/cuda_emu_limits.h).
build/ptxas/kernels.tsv: train_phd dev/ptxas_report.sh
	./dev/ptxas_report.sh --table $@
build/bench_decode_gpu: dev/bench_decode.cu $(HEADERS)
	@mkdir -p build && rm -f $@
	$(NVCC_BUILD) $< -o $@ -lcublasLt -lgomp
# The kernel lab on the CUDA emulation: `make test` runs it at --tiny.
build/bench_gpu_emu: dev/bench_gpu.cu $(HEADERS)
	@mkdir -p build && rm -f $@
	$(CXX) $(HOSTFLAGS) $(TEST_OPT) -pthread -DPHD_EMULATE_GPU -x c++ $< -o $@

bench-gpu: build/bench_gpu build/bench_decode_gpu
	./build/bench_gpu
	./build/bench_gpu --tf32 1 --lab 0
	./build/bench_gpu --bf16 1 --lab 0
	./build/bench_gpu --budget vanilla --budget phd-cswa-2-16-32 --budget phd-cswa-3-16-32
	./build/bench_gpu --budget vanilla --logits-chunk 1024
	./build/bench_decode_gpu --device cuda -P 2048 --layers 12 --dim 768 --heads 12

# The main job: set-up, the KJV corpus as GPT-2 shards, then a small phd-cswa-2-16-32 model.
# Preparation is skipped where the shards exist (a machine without network can be handed
# them, and SETUP=0 skips the set-up: dev/gpu_run.sh); the builds run in a make of their own
# after the set-up; the loss curve needs gnuplot.
KJV := data/shards/kjv
TRAIN_FLAGS ?= --variant phd-cswa-2-16-32 --layers 4 --dim 128 --heads 4 -b 8 -t 128 \
               -x 300 -l 3e-3 -u 20 -v 50 -m 10 -s 100 -g 48 -n 100
# Added to TRAIN_FLAGS (e.g. --dtype bf16), where the run goes, and what starts it
# (e.g. TRAIN_LAUNCH='mpirun -np 2': 2 ranks, each B=8, so 2048 tokens a step).
TRAIN_EXTRA ?=
TRAIN_OUT ?= out/kjv
TRAIN_LAUNCH ?=
kjv-shards:
	[ -f $(KJV)/tokenizer.bin ] || { $(MAKE) --no-print-directory build/prepare && \
	    ./build/prepare --tokenizer gpt2 --out $(KJV) --name kjv data/cache/text/kjv/kjv.txt; }
# The two multiple-choice tasks built from the corpora setup installs, from their validation
# documents only (build/prepare --eval-lines; README): KJV verses and Brown sentences.
evals: setup build/prepare
	./build/prepare --tokenizer gpt2 --eval-lines --out data/evals/kjv_verses.bin data/cache/text/kjv/kjv.txt
	./build/prepare --tokenizer gpt2 --eval-lines --out data/evals/brown_sentences.bin data/cache/text/brown/*.txt
train: setup
	@$(MAKE) --no-print-directory kjv-shards train_phd
	$(TRAIN_LAUNCH) ./train_phd -i '$(KJV)/kjv_train_*.bin' -j '$(KJV)/kjv_val_*.bin' -k $(KJV)/tokenizer.bin $(TRAIN_FLAGS) $(TRAIN_EXTRA) -o $(TRAIN_OUT)
	if command -v gnuplot >/dev/null; then ./dev/plot_loss.sh $(TRAIN_OUT)/log.txt $(TRAIN_OUT)/loss.png; \
	else echo "train: no gnuplot here, no loss curve (dev/setup.sh installs it)"; fi

clean:
	rm -rf build train_phd
