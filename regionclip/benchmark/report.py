"""The markdown table of a benchmark run's results."""
from typing import Dict, List, Sequence

__all__ = ["roofs", "deploy_table", "markdown_table"]

DEPLOY_CASES = ("batched", "onnx")


def roofs(results: Sequence[Dict]) -> Dict[str, float]:
    """Matmul GFLOP/s by dtype from the ``roof`` result (empty without one)."""
    return next(({"float32": r["gflops_fp32"], "bfloat16": r["gflops_bf16"],
                  "float16": r.get("gflops_fp16")} for r in results if r["case"] == "roof"), {})


def _roof_rows(r: Dict) -> List[str]:
    rows = [f"| fp32 matmul roof ({r['threads']} threads) | | | | "
            f"{r['gflops_fp32']:.1f} GFLOP/s | | {r['peak_rss_mb']:.0f} |",
            f"| bf16 matmul roof ({r['threads']} threads) | | | | "
            f"{r['gflops_bf16']:.1f} GFLOP/s | | |"]
    if r.get("gflops_fp16"):
        rows.append(f"| fp16 matmul roof | | | | {r['gflops_fp16']:.1f} GFLOP/s | | |")
    return rows


def deploy_table(results: Sequence[Dict]) -> List[str]:
    """The lines of the deployment table (``batched`` and ``onnx`` results; none without them):
    images/s batched against one by one, onnxruntime ms against PyTorch ms, and the largest
    differences between the detections of the two paths."""
    rows = [r for r in results if r["case"] in DEPLOY_CASES]
    if not rows:
        return []
    lines = ["", "| deployment case | regions | input | slow path | fast path | speedup | "
                 "max score / box diff | peak RSS MB |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        diff = f"{r['max_score_diff']:.1e} / {r['max_box_diff_px']:.1e} px"
        if r["case"] == "batched":
            slow = f"one by one {r['one_by_one_img_per_s']:.3f} img/s"
            fast = f"batched ({r['batch_size']}) {r['batched_img_per_s']:.3f} img/s"
            what = f"{r['images']} x {r['image_size']}"
            speedup = r["speedup"]
        else:
            slow = f"PyTorch {r['pytorch_ms']:.0f} ms"
            fast = f"onnxruntime {r['onnxruntime_ms']:.0f} ms"
            what = r["input_size"]
            speedup = r["pytorch_ms"] / r["onnxruntime_ms"]
        lines.append(f"| {r['case']} | {r.get('regions', '')} | {what} | {slow} | {fast} | "
                     f"{speedup:.2f}x | {diff} | {r['peak_rss_mb']:.0f} |")
    return lines


def markdown_table(results: Sequence[Dict], device: str = "cpu") -> str:
    """The device line and the table: seconds, GFLOP, efficiency against the roof of the case's
    dtype (``efficiency = FLOPs / time / roof``), peak memory; zero-shot cases add a row for the
    per-region head; the ``batched`` and ``onnx`` results follow in :func:`deploy_table`."""
    roof = roofs(results)
    gpu = device != "cpu"
    lines = [f"device: {results[0].get('gpu', device) if results else device}", "",
             "| case | regions | chunk | seconds | GFLOP | efficiency vs roof | peak RSS MB |"
             + (" peak GPU MB |" if gpu else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if gpu else "")]
    for r in results:
        if r["case"] in DEPLOY_CASES:
            continue
        if r["case"] == "roof":
            lines += _roof_rows(r)
            continue
        top = roof.get(r.get("dtype", "float32"))
        eff = f"{r['gflop'] / r['seconds'] / top:.0%}" if top else "n/a"
        lines.append(f"| {r['case']} | {r.get('regions', '')} | {r.get('chunk', '')} | "
                     f"{r['seconds']:.2f} | {r['gflop']:.0f} | {eff} | {r['peak_rss_mb']:.0f} |"
                     + (f" {r['peak_gpu_mb']:.0f} |" if gpu else ""))
        if "head_seconds_per_region" in r and top:
            head_eff = r["head_gflop_per_region"] / r["head_seconds_per_region"] / top
            lines.append(f"|   per-region head (res5 + attnpool), batch <= 64 | | | "
                         f"{r['head_seconds_per_region'] * 1000:.1f} ms/region | "
                         f"{r['head_gflop_per_region']:.2f} "
                         f"(attnpool {r['attnpool_gflop_per_region']:.2f}) | {head_eff:.0%} | |")
    return "\n".join(lines + deploy_table(results))
