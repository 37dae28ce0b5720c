from appo_envs.toolcalls import (
    CallError,
    ToolCall,
    parse_tool_responses,
    parse_turn,
    render_answer,
    render_observation,
    render_tool_call,
    render_tool_response,
    shown_name,
    truncate,
)


def test_round_trip_call_and_answer():
    text = "thinking… " + render_tool_call("python", {"code": "print('日本')"}) + render_answer("42")
    turn = parse_turn(text)
    assert turn.calls == [ToolCall("python", {"code": "print('日本')"})]
    assert turn.answer == "42"
    assert turn.problems == []


def test_several_calls_and_string_arguments():
    text = '<tool_call>{"name": "a", "arguments": "{\\"x\\": 1}"}</tool_call> and <tool_call>{"name": "b"}</tool_call>'
    assert parse_turn(text).calls == [ToolCall("a", {"x": 1}), ToolCall("b", {})]


def test_broken_inputs_become_errors_not_exceptions():
    cases = {
        "<tool_call>{not json}</tool_call>": "not valid JSON",
        "<tool_call>[1, 2]</tool_call>": "JSON object",
        '<tool_call>{"arguments": {}}</tool_call>': '"name"',
        '<tool_call>{"name": "x", "arguments": 3}</tool_call>': "must be a JSON object",
        '<tool_call>{"name": "x"': "unclosed",
    }
    for text, fragment in cases.items():
        turn = parse_turn(text)
        assert len(turn.calls) == 1 and isinstance(turn.calls[0], CallError), text
        assert fragment in turn.calls[0].message, (text, turn.calls[0].message)


def test_stray_and_nested_tags_are_reported():
    assert parse_turn("</answer> hi").problems == ["</answer> without a matching opening tag"]
    turn = parse_turn("<answer>1<answer>2</answer>")
    assert turn.answer == "2" and "opened inside" in turn.problems[0]


def test_tool_response_round_trip_and_truncate():
    obs = render_tool_response("python", "ok", "a\nb") + "\n" + render_tool_response("python", "timeout", "x")
    assert parse_tool_responses(obs) == [("python", "ok", "a\nb"), ("python", "timeout", "x")]
    cut = truncate("x" * 1000, 100)
    assert len(cut) <= 100 and "truncated" in cut
    assert truncate("short", 100) == "short"


def test_numbers_and_nesting_python_cannot_read_are_call_errors():
    cases = {
        '<tool_call>{"name": "x", "arguments": {"n": ' + "9" * 5000 + "}}</tool_call>": "more than 4300 digits",
        '<tool_call>{"name": "x", "arguments": "{\\"n\\": ' + "9" * 5000 + '}"}</tool_call>': "more than 4300 digits",
        "<tool_call>" + "[" * 30_000 + "]" * 30_000 + "</tool_call>": "deeper than 64 levels",
        '<tool_call>{"name": "x", "arguments": {"a": ' + "[" * 63 + "]" * 63 + "}}</tool_call>": "deeper than 64 levels",
    }
    for text, fragment in cases.items():
        (call,) = parse_turn(text).calls
        assert isinstance(call, CallError) and fragment in call.message, (text[:60], call)
    ok = '<tool_call>{"name": "x", "arguments": {"a": ' + "[" * 62 + "]" * 62 + "}}</tool_call>"
    assert isinstance(parse_turn(ok).calls[0], ToolCall)  # exactly 64 levels is allowed


def test_shown_name_escapes_and_caps_agent_names():
    assert shown_name("python") == "python" and shown_name("инструмент_🚀") == "инструмент_🚀"
    assert shown_name("a b\n</tool_response>\ud800") == "a\\x20b\\x0a\\x3c/tool_response\\x3e\\ud800"
    assert shown_name("n" * 100) == "n" * 64 + "…"
    (call,) = parse_turn('<tool_call>{"name": "\\ud800\\n", "arguments": 3}</tool_call>').calls
    assert "'\\ud800\\x0a'" in call.message


def test_render_observation_shares_the_limit_fairly():
    responses = [("a", "ok", "x" * 1000), ("b", "ok", "short"), ("c", "error", "y" * 1000)]
    full = render_observation(responses, ["note"], 10_000)
    assert full == "\n".join([render_tool_response(*r) for r in responses] + ["note"])  # under the limit: unchanged
    cut = render_observation(responses, ["note"], 300)
    assert len(cut) <= 300 and cut.endswith("\nnote")
    (_, _, a), (_, _, b), (_, _, c) = parse_tool_responses(cut)
    assert b == "short" and "truncated" in a and "truncated" in c and abs(len(a) - len(c)) <= 1
    many = render_observation([("a", "error", "z" * 50)] * 100, [], 300)
    assert len(many) <= 300  # more tags than room: the whole turn is cut
