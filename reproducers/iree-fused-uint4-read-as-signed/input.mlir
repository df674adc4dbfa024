// x [1, 16] . dequant(codes [2, 16]).T, codes unsigned 4-bit: the contraction IREE fuses.
// The codes arrive as ui8 (a command line cannot pass 4-bit tensors) and are narrowed in the graph.
func.func @main(%x: tensor<1x16xf32>, %codes: tensor<2x16xui8>) -> tensor<1x2xf32> {
  %u4 = stablehlo.convert %codes : (tensor<2x16xui8>) -> tensor<2x16xui4>
  %w = stablehlo.convert %u4 : (tensor<2x16xui4>) -> tensor<2x16xf32>
  %y = stablehlo.dot_general %x, %w, contracting_dims = [1] x [1], precision = [HIGHEST, HIGHEST] : (tensor<1x16xf32>, tensor<2x16xf32>) -> tensor<1x2xf32>
  return %y : tensor<1x2xf32>
}
