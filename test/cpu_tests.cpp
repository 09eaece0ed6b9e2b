// The CPU tests (build/test_cpu) as one translation unit: the engine's headers are compiled
// once here instead of once per file (the files stay separate to read).
#include "test_main.cpp"
#include "test_model.cpp"
#include "test_train.cpp"
#include "test_train_gpu.cpp"
#include "test_fixtures.cpp"
#include "test_decode.cpp"
