from appo_envs.toolcalls import (
    CallError,
    ToolCall,
    parse_tool_responses,
    parse_turn,
    render_answer,
    render_tool_call,
    render_tool_response,
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
