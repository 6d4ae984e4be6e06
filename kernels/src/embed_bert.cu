// The gather of BERT's embedding stage: out[r] = (word[tokens[r]] + token_type) + position[positions[r]],
// f32, in exactly the CPU's association (Geneformer's `embed`, as Hugging Face adds them); the LayerNorm
// that follows is `add_layer_norm` with a zero second operand. One block per token row.
//
// Bound: memory (three row reads and one row write per token; the tables sit in L2 for hot tokens).
extern "C" __global__ void embed_bert_gather_f32(const unsigned int* __restrict__ tokens,
                                                 const unsigned int* __restrict__ positions,
                                                 const float* __restrict__ word,
                                                 const float* __restrict__ position,
                                                 const float* __restrict__ token_type,
                                                 float* __restrict__ out, int rows, int d) {
    const int r = blockIdx.x;
    if (r >= rows) {
        return;
    }
    const float* w = word + (size_t)tokens[r] * (size_t)d;
    const float* p = position + (size_t)positions[r] * (size_t)d;
    float* o = out + (size_t)r * (size_t)d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        o[i] = __fadd_rn(__fadd_rn(w[i], token_type[i]), p[i]);
    }
}
