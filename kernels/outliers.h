// kernels/outliers.h: spikes and divergence in a training run, seen rather than trained
// through. train_phd flags a step whose loss or gradient norm is an outlier, can skip its
// update (--skip-update-z), and says once, plainly, when the loss has run away from its start.
#pragma once
#include <cmath>
#include <vector>

// The z-score of a value against the values just before it, as llm.c's OutlierDetector:
// (x - mean) / std over a window of the last kWindow values (population std). There is no
// score (NaN) until kMinSamples values are in: 16 is the fewest for which the std is within
// ~20 % (1/sqrt(2*15)), and spikes come early in training, right after warm-up. Every finite
// value joins the window, outliers too, so that a lasting change of level (a new data mix, a
// schedule step) becomes the new normal instead of being flagged, or skipped, forever.
struct OutlierDetector {
    static constexpr int kWindow = 128, kMinSamples = 16;
    // The z above which train_phd flags a step when --skip-update-z does not set a lower one:
    // a 5-sigma step is rare in a healthy run yet still loud in a noisy one.
    static constexpr double kFlagZ = 5.0;
    std::vector<double> window;  // the last values, a ring once full
    int next = 0;                // the oldest value once full: the next to be replaced

    // x's z-score against the window (NaN while it has under kMinSamples values; +-inf when
    // they are all equal and x is not), then x joins it. A NaN or inf gets NaN and stays out
    // (so no z flags or skips it: train_phd stops the run at a non-finite loss or gradient
    // norm before it scores them, rather than train on past a model that has broken).
    double update(double x) {
        if (!std::isfinite(x)) return NAN;
        double z = NAN;
        const double n = (double)window.size();
        if (window.size() >= (size_t)kMinSamples) {
            double mean = 0, var = 0;
            for (double v : window) mean += v;
            mean /= n;
            for (double v : window) var += (v - mean) * (v - mean);  // two passes: no cancellation
            const double sd = std::sqrt(var / n);
            z = sd > 0 ? (x - mean) / sd : x == mean ? 0.0 : std::copysign(INFINITY, x - mean);
        }
        if (window.size() < (size_t)kWindow) {
            window.push_back(x);
        } else {
            window[next] = x;
            next = (next + 1) % kWindow;
        }
        return z;
    }
};

// A run whose loss has grown far above where it started: kSteps step losses in a row above
// kFactor times the first. A fresh model starts near ln V (a uniform guess), and a healthy
// run, whatever its spikes, does not stay above twice that; one at lr 10 passes it at its
// second step (3.49 -> 1145 on the tests' tiny model). Five in a row leaves a lone spike to
// OutlierDetector. The start is the first loss this process sees: after --resume, the loss
// at the resume point.
struct DivergenceCheck {
    static constexpr int kSteps = 5;
    static constexpr double kFactor = 2.0;
    double start = NAN;
    int above = 0;  // consecutive losses above kFactor * start
    bool warned = false;

    // True exactly once: at the loss that makes the run count as diverged.
    bool update(double loss) {
        if (std::isnan(start)) start = loss;
        above = loss > kFactor * start ? above + 1 : 0;
        if (above < kSteps || warned) return false;
        warned = true;
        return true;
    }
};
