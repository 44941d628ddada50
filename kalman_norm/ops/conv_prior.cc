// The analytic conv prior of KN (kalman_norm/transition.py, _conv_moments), fused for the CPU.
//
// With A the conv kernel W [T taps, C_in, C_out] and independent inputs of per-channel moments
// (m, v) [G groups, C_in], Eq. 7's prediction needs, per tap t,
//     a_t = m W_t                      (the tap's contribution to the mean)   [G, C_out]
//     b   = Σ_t f_t (v W_t²)           (the coverage-weighted variance term)  [G, C_out]
// and, in the backward pass, given da_t = ∂L/∂a_t and db = ∂L/∂b,
//     dm = Σ_t da_t W_tᵀ,   dv = Σ_t f_t db (W_t²)ᵀ,   dW_t = mᵀ da_t + 2 f_t W_t ⊙ (vᵀ db).
// Written with TensorFlow's ops these are ~8 passes over the kernel (W², two products forward;
// two products, two outer products, two multiplies and a sum backward), which are memory-bound
// and make most of KN's extra time per step (results/table3_speed.md).  Here the forward reads
// W once and the backward reads W once and writes dW once.
//
// The rest of the prior (mean = Σ_t f_t a_t, the spread of border positions) works on the small
// [T, G, C_out] tensor a and stays in TensorFlow ops, with their own gradients.
#include <algorithm>
#include <functional>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace kalman_norm {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Status;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

// Checks shared by both ops: m, v [G, C_in]; w [T, C_in, C_out]; f [T].
static Status CheckInputs(const Tensor& m, const Tensor& v, const Tensor& w, const Tensor& f) {
  if (m.dims() != 2 || v.shape() != m.shape())
    return tensorflow::errors::InvalidArgument("m and v must be [G, C_in] of one shape, got ",
                                               m.shape().DebugString(), " and ",
                                               v.shape().DebugString());
  if (w.dims() != 3 || w.dim_size(1) != m.dim_size(1))
    return tensorflow::errors::InvalidArgument("w must be [T, C_in, C_out] with C_in = ",
                                               m.dim_size(1), ", got ", w.shape().DebugString());
  if (f.dims() != 1 || f.dim_size(0) != w.dim_size(0))
    return tensorflow::errors::InvalidArgument("f must be [T] with T = ", w.dim_size(0),
                                               ", got ", f.shape().DebugString());
  return tensorflow::OkStatus();
}

static void Parallel(OpKernelContext* ctx, int64_t units, int64_t cost_per_unit,
                     const std::function<void(int64_t, int64_t)>& work) {
  auto* threads = ctx->device()->tensorflow_cpu_worker_threads();
  tensorflow::Shard(threads->num_threads, threads->workers, units, cost_per_unit, work);
}

// Kernel rows (t, c) per unit of work: each unit reads its rows of W once, in memory order.
constexpr int64_t kRowsPerUnit = 16;

REGISTER_OP("KalmanNormConvPrior")
    .Input("m: float")
    .Input("v: float")
    .Input("w: float")
    .Input("f: float")
    .Output("a: float")
    .Output("b: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle m, w;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &m));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 3, &w));
      DimensionHandle groups = c->Dim(m, 0), taps = c->Dim(w, 0), cout = c->Dim(w, 2);
      c->set_output(0, c->MakeShape({taps, groups, cout}));
      c->set_output(1, c->MakeShape({groups, cout}));
      return tensorflow::OkStatus();
    })
    .Doc("a[t] = m W[t] for every tap; b = sum_t f[t] (v W[t]^2).  KN's analytic conv prior.");

class ConvPriorOp : public OpKernel {
 public:
  explicit ConvPriorOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor &m = ctx->input(0), &v = ctx->input(1), &w = ctx->input(2), &f = ctx->input(3);
    OP_REQUIRES_OK(ctx, CheckInputs(m, v, w, f));
    const int64_t G = m.dim_size(0), C = w.dim_size(1), O = w.dim_size(2), T = w.dim_size(0);
    Tensor *a_t = nullptr, *b_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({T, G, O}), &a_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({G, O}), &b_t));
    const float *M = m.flat<float>().data(), *V = v.flat<float>().data();
    const float *W = w.flat<float>().data(), *F = f.flat<float>().data();
    float *A = a_t->flat<float>().data(), *B = b_t->flat<float>().data();
    // W is read row by row in memory order; a and b are sums over the rows, so every thread
    // sums into its own partial buffer (a few [T, G, C_out] floats) and the partials are added
    // at the end.  Rows are split into contiguous ranges, one partial buffer per range.
    const int64_t rows = T * C, a_size = T * G * O, size = a_size + G * O;
    const int64_t ranges = std::min<int64_t>(
        (rows + kRowsPerUnit - 1) / kRowsPerUnit,
        2 * ctx->device()->tensorflow_cpu_worker_threads()->num_threads);
    std::vector<float> partial(ranges * size, 0.f);
    Parallel(ctx, ranges, (rows / ranges + 1) * O * G * 4, [&](int64_t first, int64_t last) {
      for (int64_t r = first; r < last; ++r) {
        float* pa = partial.data() + r * size;
        float* pb = pa + a_size;
        for (int64_t row = rows * r / ranges; row < rows * (r + 1) / ranges; ++row) {
          const int64_t t = row / C, c = row % C;
          const float* wrow = W + row * O;
          for (int64_t g = 0; g < G; ++g) {
            const float mg = M[g * C + c], vg = F[t] * V[g * C + c];
            float* arow = pa + (t * G + g) * O;
            float* brow = pb + g * O;
            for (int64_t k = 0; k < O; ++k) {
              const float x = wrow[k];
              arow[k] += mg * x;
              brow[k] += vg * x * x;
            }
          }
        }
      }
    });
    float* out[2] = {A, B};
    const int64_t offset[2] = {0, a_size}, count[2] = {a_size, G * O};
    for (int i = 0; i < 2; ++i) {
      std::fill(out[i], out[i] + count[i], 0.f);
      for (int64_t r = 0; r < ranges; ++r) {
        const float* p = partial.data() + r * size + offset[i];
        for (int64_t k = 0; k < count[i]; ++k) out[i][k] += p[k];
      }
    }
  }
};

REGISTER_KERNEL_BUILDER(Name("KalmanNormConvPrior").Device(DEVICE_CPU), ConvPriorOp);

REGISTER_OP("KalmanNormConvPriorGrad")
    .Input("m: float")
    .Input("v: float")
    .Input("w: float")
    .Input("f: float")
    .Input("da: float")
    .Input("db: float")
    .Output("dm: float")
    .Output("dv: float")
    .Output("dw: float")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      c->set_output(1, c->input(1));
      c->set_output(2, c->input(2));
      return tensorflow::OkStatus();
    })
    .Doc("Gradient of KalmanNormConvPrior with respect to m, v and w (f is a constant).");

class ConvPriorGradOp : public OpKernel {
 public:
  explicit ConvPriorGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor &m = ctx->input(0), &v = ctx->input(1), &w = ctx->input(2), &f = ctx->input(3);
    const Tensor &da = ctx->input(4), &db = ctx->input(5);
    OP_REQUIRES_OK(ctx, CheckInputs(m, v, w, f));
    const int64_t G = m.dim_size(0), C = w.dim_size(1), O = w.dim_size(2), T = w.dim_size(0);
    OP_REQUIRES(ctx, da.shape() == TensorShape({T, G, O}) && db.shape() == TensorShape({G, O}),
                tensorflow::errors::InvalidArgument("da must be [T, G, C_out] and db [G, C_out], got ",
                                                    da.shape().DebugString(), " and ",
                                                    db.shape().DebugString()));
    Tensor *dm_t = nullptr, *dv_t = nullptr, *dw_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, m.shape(), &dm_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, v.shape(), &dv_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, w.shape(), &dw_t));
    const float *M = m.flat<float>().data(), *V = v.flat<float>().data();
    const float *W = w.flat<float>().data(), *F = f.flat<float>().data();
    const float *DA = da.flat<float>().data(), *DB = db.flat<float>().data();
    float *DM = dm_t->flat<float>().data(), *DV = dv_t->flat<float>().data();
    float* DW = dw_t->flat<float>().data();
    // Units are input channels c: each owns columns c of dm and dv and the rows (t, c) of dW,
    // so no unit writes where another does.  Within a unit the rows are visited tap by tap, in
    // memory order; da and db (small) are re-read from cache by every unit.
    Parallel(ctx, C, T * O * (4 * G + 2), [&](int64_t first, int64_t last) {
      for (int64_t g = 0; g < G; ++g) {
        std::fill(DM + g * C + first, DM + g * C + last, 0.f);
        std::fill(DV + g * C + first, DV + g * C + last, 0.f);
      }
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t c = first; c < last; ++c) {
          const float* wrow = W + (t * C + c) * O;
          float* dwrow = DW + (t * C + c) * O;
          for (int64_t g = 0; g < G; ++g) {
            const float mg = M[g * C + c], vg2 = 2.f * F[t] * V[g * C + c];
            const float* darow = DA + (t * G + g) * O;
            const float* dbrow = DB + g * O;
            float sm = 0.f, sv = 0.f;
            if (g == 0) {
              for (int64_t k = 0; k < O; ++k) {
                const float x = wrow[k];
                dwrow[k] = mg * darow[k] + vg2 * x * dbrow[k];
                sm += darow[k] * x;
                sv += dbrow[k] * x * x;
              }
            } else {
              for (int64_t k = 0; k < O; ++k) {
                const float x = wrow[k];
                dwrow[k] += mg * darow[k] + vg2 * x * dbrow[k];
                sm += darow[k] * x;
                sv += dbrow[k] * x * x;
              }
            }
            DM[g * C + c] += sm;
            DV[g * C + c] += F[t] * sv;
          }
        }
      }
    });
  }
};

REGISTER_KERNEL_BUILDER(Name("KalmanNormConvPriorGrad").Device(DEVICE_CPU), ConvPriorGradOp);

}  // namespace kalman_norm
