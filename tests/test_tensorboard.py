"""The dashboards: event files written without TensorFlow must be readable by TensorBoard's own loader, with the
scalars every comparison uses, the HParams experiment and sessions, and the multiline comparison layout."""

import sys

from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import metadata as hp_metadata

from localrules import sweep

TINY = ["task=prototypes", "task.size=8", "task.test_size=200", "arch.hidden=[16]", "batch_size=16", "timing_steps=3",
        "samples=320", "progress=false", "checkpoint=false"]


def _load(path):
    acc = ea.EventAccumulator(str(path), size_guidance={ea.TENSORS: 0, ea.SCALARS: 0})
    acc.Reload()
    return acc


def test_a_sweep_writes_tensorboard_runs_with_scalars_hparams_and_a_comparison_layout(tmp_path):
    assert sweep.main([f"out={tmp_path}", "sweep=" + str(_grid(tmp_path)), *TINY]) == 0
    root = tmp_path / "default"
    runs = sorted(p for p in root.glob("*/seed0"))
    assert len(runs) == 2
    for r in runs:
        acc = _load(r)
        tags = set(acc.Tags()["scalars"])
        assert {"test/accuracy", "train/loss", "compute/gflop_per_step", "test/accuracy_vs_mflop"} <= tags, tags
        steps = [e.step for e in acc.Scalars("test/accuracy")]
        assert steps[0] == 0 and steps[-1] == 20
        content = acc.PluginTagToContent(hp_metadata.PLUGIN_NAME)
        assert hp_metadata.SESSION_START_INFO_TAG in content and hp_metadata.SESSION_END_INFO_TAG in content
    acc = _load(root)
    content = acc.PluginTagToContent(hp_metadata.PLUGIN_NAME)
    assert hp_metadata.EXPERIMENT_TAG in content
    exp = hp_metadata.parse_experiment_plugin_data(content[hp_metadata.EXPERIMENT_TAG])
    assert {h.name for h in exp.hparam_infos} >= {"rule", "lr"}
    assert "test/accuracy" in {m.name.tag for m in exp.metric_infos}
    layout_tensor = acc.Tensors("custom_scalars__config__")[0].tensor_proto
    layout = layout_pb2.Layout.FromString(layout_tensor.string_val[0])
    multiline_tags = [t for c in layout.category for ch in c.chart for t in ch.multiline.tag]
    assert "^test/accuracy$" in multiline_tags
    assert "tensorflow" not in sys.modules


def _grid(tmp_path):
    p = tmp_path / "g.toml"
    p.write_text('[grid]\nrule = ["backprop", "feedback_alignment"]\n')
    return p
