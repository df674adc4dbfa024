module @jit_gemv attributes {jax.uses_shape_polymorphism = false, mhlo.num_partitions = 1 : i32, mhlo.num_replicas = 1 : i32} {
  func.func public @main(%arg0: tensor<1x2048xbf16> loc("x"), %arg1: tensor<128256x2048xbf16> loc("w")) -> (tensor<1x128256xbf16> {jax.result_info = "result"}) {
    %0 = stablehlo.dot_general %arg0, %arg1, contracting_dims = [1] x [1] : (tensor<1x2048xbf16>, tensor<128256x2048xbf16>) -> tensor<1x128256xf32>
    %1 = stablehlo.convert %0 : (tensor<1x128256xf32>) -> tensor<1x128256xbf16>
    return %1 : tensor<1x128256xbf16>
  }
}
