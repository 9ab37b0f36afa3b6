"""factorkern's microbenchmark: ``python -m bench.sweep`` (run from the repository root).

Modules:
    shapes     named model shapes (llama2-7b, llama3-8b, bert-base), ``OUTxIN`` parsing, M lists
    cases      random factors for each op at the papers' default sizes, in the benchmark dtype
    baselines  what a user would run instead: dense ``F.linear``, torch 2:4, fly's bmm Monarch,
               the unfused torch composite of the same factors
    roofline   FLOPs and minimum bytes of every op (pure functions) and the measured device peaks
    timing     L2-cold medians: CUDA graphs over rotating input sets, or perf_counter on the CPU
    measure    one row: the variants of a case, checking one against the reference and timing it
    report     markdown tables (decode and prefill apart), JSON rows, the speedup plot
    sweep      the command line
    model      the static performance model of the decode kernels (no GPU: from the SASS;
               ``python -m bench.model``, docs/perf_model.md)
    model_triton  the Triton decode kernels compiled for sm_90a, for the model

Nothing here touches a GPU at import time.
"""
