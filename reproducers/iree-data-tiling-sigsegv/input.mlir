// Attention scores (a batched dot over 2 KV heads) masked by position (iota <= pos, select):
// the smallest part of the Llama decode graph that iree-compile 3.13 crashes on with
// --iree-opt-data-tiling (llvm-cpu). Either op alone compiles; so does the graph without the flag.
func.func @main(%q: tensor<1x2x4x64xf32>, %k: tensor<2x32x64xf32>, %pos: tensor<1xi32>) -> tensor<2x4x1x32xf32> {
  %min = stablehlo.constant dense<-1.000000e+30> : tensor<2x4x1x32xf32>
  %s = stablehlo.dot_general %k, %q, batching_dims = [0] x [1], contracting_dims = [2] x [3], precision = [HIGHEST, HIGHEST] : (tensor<2x32x64xf32>, tensor<1x2x4x64xf32>) -> tensor<2x32x1x4xf32>
  %st = stablehlo.transpose %s, dims = [0, 3, 2, 1] : (tensor<2x32x1x4xf32>) -> tensor<2x4x1x32xf32>
  %slot = stablehlo.iota dim = 0 : tensor<32xi32>
  %slots = stablehlo.broadcast_in_dim %slot, dims = [1] : (tensor<32xi32>) -> tensor<1x32xi32>
  %p = stablehlo.broadcast_in_dim %pos, dims = [0] : (tensor<1xi32>) -> tensor<1x32xi32>
  %visible = stablehlo.compare LE, %slots, %p, SIGNED : (tensor<1x32xi32>, tensor<1x32xi32>) -> tensor<1x32xi1>
  %mask = stablehlo.broadcast_in_dim %visible, dims = [2, 3] : (tensor<1x32xi1>) -> tensor<2x4x1x32xi1>
  %out = stablehlo.select %mask, %st, %min : tensor<2x4x1x32xi1>, tensor<2x4x1x32xf32>
  return %out : tensor<2x4x1x32xf32>
}
