"""TensorBoard event files without TensorFlow: scalars, text, images, HParams and custom-scalar layouts.

Only TF-free modules of the ``tensorboard`` package are used (``EventFileWriter``, the protos, the plugins'
``metadata`` modules and ``hparams.summary_v2``'s proto builders). ``flax.metrics.tensorboard`` and
``tensorboard.plugins.hparams.api`` import TensorFlow, so they are avoided.

Layout of a sweep's log directory::

    runs/<sweep>/                     hparams_config (the experiment) + custom-scalar layout
    runs/<sweep>/<run>/seed<k>/       one TensorBoard run per (rule, task, seed): scalars, session start/end
"""

from __future__ import annotations

import io
import os
import time

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as cs_metadata
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hp_metadata
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.plugins.hparams import summary_v2 as hp
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.util import tensor_util

#: Metrics every run logs and the HParams table shows.
HPARAM_METRICS = (
    ("test/accuracy", "test accuracy"),
    ("train/loss", "training loss"),
    ("compute/gflop_per_step", "GFLOP per update step (compiled)"),
    ("time/step_ms", "median update step time, ms"),
    ("mem/peak_mb", "peak memory of the compiled step, MB"),
)


class Writer:
    """A minimal event writer for one TensorBoard run directory."""

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        self._w = EventFileWriter(logdir)

    def _add(self, summary: summary_pb2.Summary, step: int = 0):
        self._w.add_event(event_pb2.Event(summary=summary, wall_time=time.time(), step=int(step)))

    def scalar(self, tag: str, value: float, step: int):
        self._add(summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=float(value))]), step)

    def scalars(self, values: dict, step: int):
        vals = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()]
        self._add(summary_pb2.Summary(value=vals), step)

    def text(self, tag: str, markdown: str, step: int = 0):
        md = text_metadata.create_summary_metadata(display_name=tag, description="")
        tensor = tensor_util.make_tensor_proto([markdown.encode()], dtype=np.object_)
        self._add(summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, metadata=md, tensor=tensor)]), step)

    def image(self, tag: str, png_bytes: bytes, width: int, height: int, step: int = 0):
        md = image_metadata.create_summary_metadata(display_name=tag, description="")
        tensor = tensor_util.make_tensor_proto([str(width).encode(), str(height).encode(), png_bytes],
                                               dtype=np.object_)
        self._add(summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, metadata=md, tensor=tensor)]), step)

    def purge_after(self, step: int):
        """Start a session at ``step``: TensorBoard discards this run's older events with larger steps (resume)."""
        self._w.add_event(event_pb2.Event(step=int(step), wall_time=time.time(),
                                          session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

    def raw(self, summary: summary_pb2.Summary, step: int = 0):
        self._add(summary, step)

    def flush(self):
        self._w.flush()

    def close(self):
        self._w.close()


def _hparam_value(v):
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float, str)):
        return v
    return str(v)


def write_experiment(logdir: str, hparams: dict[str, list]):
    """At the sweep root: the HParams experiment (every swept key as a column) and the comparison layout.

    Args:
      hparams: key → list of values seen in the sweep (the ``rule`` column is ``Discrete`` over all rules).
    """
    hps = []
    for k, vals in sorted(hparams.items()):
        vals = sorted({_hparam_value(v) for v in vals}, key=str)
        if all(isinstance(v, bool) for v in vals) or all(isinstance(v, str) for v in vals):
            hps.append(hp.HParam(k, hp.Discrete(vals)))
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            lo, hi = float(min(vals)), float(max(vals))
            hps.append(hp.HParam(k, hp.RealInterval(lo, hi if hi > lo else lo + 1e-12)))
        else:
            hps.append(hp.HParam(k, hp.Discrete([str(v) for v in vals])))
    metrics = [hp.Metric(tag, display_name=name) for tag, name in HPARAM_METRICS]
    w = Writer(logdir)
    w.raw(hp.hparams_config_pb(hps, metrics))
    w.raw(comparison_layout())
    w.close()


def comparison_layout() -> summary_pb2.Summary:
    """Custom-scalar layout: multiline charts that put every run's curve of a tag in one chart."""
    charts = []
    for tag, title in (("test/accuracy", "test accuracy, every run"), ("train/loss", "training loss, every run"),
                       ("test/accuracy_vs_mflop", "test accuracy against training MFLOP (x axis), every run")):
        charts.append(layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=[rf"^{tag}$"])))
    layout = layout_pb2.Layout(category=[layout_pb2.Category(title="rule vs rule", chart=charts)])
    md = cs_metadata.create_summary_metadata()
    tensor = tensor_util.make_tensor_proto(layout.SerializeToString(), dtype=np.object_)
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=cs_metadata.CONFIG_SUMMARY_TAG, metadata=md,
                                                                tensor=tensor)])


def session_start(w: Writer, hparams: dict, trial_id: str):
    w.raw(hp.hparams_pb({k: _hparam_value(v) for k, v in hparams.items()}, trial_id=trial_id,
                        start_time_secs=time.time()))


def session_end(w: Writer, status: str = "ok"):
    st = {"ok": api_pb2.STATUS_SUCCESS, "diverged": api_pb2.STATUS_FAILURE}.get(status, api_pb2.STATUS_UNKNOWN)
    info = plugin_data_pb2.SessionEndInfo(status=st, end_time_secs=time.time())
    content = plugin_data_pb2.HParamsPluginData(session_end_info=info, version=hp_metadata.PLUGIN_DATA_VERSION)
    md = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(
        plugin_name=hp_metadata.PLUGIN_NAME, content=content.SerializeToString()))
    w.raw(summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=hp_metadata.SESSION_END_INFO_TAG, metadata=md)]))


def png_of_matrix(m: np.ndarray, row_labels, col_labels, title: str = "") -> tuple[bytes, int, int]:
    """Render a matrix as an annotated heatmap PNG (for R matrices)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1 + 0.7 * m.shape[1], 1 + 0.5 * m.shape[0]), dpi=100)
    ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(m.shape[1]), col_labels)
    ax.set_yticks(range(m.shape[0]), row_labels)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", color="w" if m[i, j] < 0.6 else "k", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    w, h = fig.canvas.get_width_height()
    return buf.getvalue(), w, h
