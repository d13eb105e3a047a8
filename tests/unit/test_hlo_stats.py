# ruff: noqa: E501 (HLO text is quoted as the compiler writes it)
"""Reading collectives out of optimised HLO text, in the forms the TPU compiler writes them."""
from baichuan_audio_jax.training import hlo_stats

# A scanned loop as the TPU compiler leaves it: no ``known_trip_count`` on the while, the bound
# in the condition; the weight gather inside the body carries no op_name of its own.
TPU_STYLE = """\
HloModule jit_train_step

%cond.1 (param.1: (s32[], bf16[4,8])) -> pred[] {
  %constant.7 = s32[]{:T(128)} constant(28)
  %param.1 = (s32[]{:T(128)}, bf16[4,8]{1,0}) parameter(0)
  %gte.1 = s32[]{:T(128)} get-tuple-element(%param.1), index=0
  ROOT %lt.1 = pred[]{:T(512)} compare(%gte.1, %constant.7), direction=LT, metadata={op_name="x/cond/lt"}
}

%body.1 (param.2: (s32[], bf16[4,8])) -> (s32[], bf16[4,8]) {
  %param.2 = (s32[]{:T(128)}, bf16[4,8]{1,0}) parameter(0)
  %gte.2 = bf16[4,8]{1,0} get-tuple-element(%param.2), index=1
  %all-reduce.3 = bf16[1,3584,64]{2,1,0} all-reduce(%gte.2), channel_id=2, replica_groups=mesh['axis_0'=64,'axis_1'=1] {'axis_0'}, to_apply=%add
  %all-reduce.4 = bf16[16,16]{1,0} all-reduce(%gte.2), channel_id=3, replica_groups=[2,32]<=[64], to_apply=%add, metadata={op_name="jit(train_step)/audio_head/dot_general"}
  ROOT %tuple.2 = (s32[], bf16[4,8]) tuple(%param.2, %gte.2)
}

ENTRY %main (p: bf16[4,8]) -> bf16[4,8] {
  %p = bf16[4,8]{1,0} parameter(0)
  %while.1 = (s32[], bf16[4,8]) while(%t), condition=%cond.1, body=%body.1, metadata={op_name="jit(train_step)/forward_backward/jvp(llm_layers)/while"}
  %all-gather.9 = bf16[64,8]{1,0} all-gather(%p), channel_id=9, replica_groups=[1,64]<=[64], dimensions={0}, metadata={op_name="jit(train_step)/lm_head_loss/x"}
  ROOT %r = bf16[4,8]{1,0} copy(%p)
}
"""


def test_trip_count_from_condition_and_scope_from_enclosing_loop():
    colls = {c.shapes: c for c in hlo_stats.collectives(TPU_STYLE)}
    gather = colls[(("bf16", (1, 3584, 64)),)]
    assert gather.count == 28  # read from `compare(counter, constant(28)), direction=LT`
    assert gather.group_size == 64
    assert hlo_stats.component_of(gather.op_name) == "llm_layers"  # inherited from the while
    own = colls[(("bf16", (16, 16)),)]
    assert own.count == 28 and own.group_size == 32
    assert hlo_stats.component_of(own.op_name) == "audio_head"  # its own op_name wins
    top = colls[(("bf16", (64, 8)),)]
    assert top.count == 1 and top.kind == "all-gather"
    summary = hlo_stats.summarize(hlo_stats.collectives(TPU_STYLE))
    assert summary["by_kind"]["all-reduce"] == 28 * (2 * 3584 * 64 + 2 * 16 * 16)
    assert summary["by_component"]["lm_head_loss"] == 2 * 64 * 8
