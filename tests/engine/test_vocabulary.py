"""One vocabulary: engine.messages' Literals are the source of every side, kind, time in force,
stp mode and cancel reason the core writes or reads (issue 22)."""
from perpdex.engine import messages as M
from perpdex.engine import state, wire


def test_the_core_name_tables_are_the_messages_tuples():
    assert (state.SIDE_NAMES, state.KIND_NAMES, state.TIF_NAMES, state.STP_NAMES) == (
        M.SIDES, M.ORDER_KINDS, M.TIFS, M.STP_MODES)
    assert state.TIFS == {name: code for code, name in enumerate(M.TIFS)}


def test_the_writer_value_tokens_are_the_messages_tuples_in_code_order():
    values = M.SIDES + M.ORDER_KINDS + M.TIFS + M.CANCEL_REASONS
    assert wire.TOKENS[-len(values):] == values


def test_every_cancel_reason_is_a_value_the_writer_knows():
    assert set(M.CANCEL_REASONS) == {v for k, v in vars(M.CancelReason).items() if k.isupper()}
    assert len(M.CANCEL_REASONS) == len(set(M.CANCEL_REASONS))
