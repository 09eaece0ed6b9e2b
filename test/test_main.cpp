// Test runner: doctest, plus the plain closing line CI reads ("N passed, M failed", test cases).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <cstdio>
#ifdef PHD_NATIVE_GPU
#include <cuda_runtime.h>
#endif

static unsigned g_cases = 0, g_failed = 0;

struct SummaryListener : doctest::IReporter {
    explicit SummaryListener(const doctest::ContextOptions&) {}
    void report_query(const doctest::QueryData&) override {}
    void test_run_start() override {}
    void test_run_end(const doctest::TestRunStats& s) override {
        g_cases = s.numTestCasesPassingFilters;
        g_failed = s.numTestCasesFailed;
    }
    void test_case_start(const doctest::TestCaseData&) override {}
    void test_case_reenter(const doctest::TestCaseData&) override {}
    void test_case_end(const doctest::CurrentTestCaseStats&) override {}
    void test_case_exception(const doctest::TestCaseException&) override {}
    void subcase_start(const doctest::SubcaseSignature&) override {}
    void subcase_end() override {}
    void log_assert(const doctest::AssertData&) override {}
    void log_message(const doctest::MessageData&) override {}
    void test_case_skipped(const doctest::TestCaseData&) override {}
};
REGISTER_LISTENER("summary", 1, SummaryListener);

int main(int argc, char** argv) {
#ifdef PHD_NATIVE_GPU
    // cudaGetDeviceCount returns an error, not just 0, on machines without a GPU.
    int devices = 0;
    cudaError_t e = cudaGetDeviceCount(&devices);
    if (e != cudaSuccess || devices == 0) {
        printf("gpu: SKIPPED (no CUDA device: %s)\n", e != cudaSuccess ? cudaGetErrorString(e) : "device count is 0");
        return 0;
    }
#endif
    doctest::Context ctx(argc, argv);
    int rc = ctx.run();
    if (ctx.shouldExit()) return rc;
    printf("%u passed, %u failed\n", g_cases - g_failed, g_failed);
    return rc != 0 || g_failed != 0 ? 1 : 0;
}
