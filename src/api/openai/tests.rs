use super::*;

fn plan(v: Value) -> OaiResult<Plan> {
    let s: Sampling = serde_json::from_value(v).expect("parses");
    s.plan()
}

#[test]
fn sampling_fields_map_to_options() {
    let p = plan(json!({"model": "m", "max_tokens": 7, "temperature": 0, "stop": ["x"], "seed": 3, "n": 2})).ok().expect("valid");
    assert_eq!(p.options.num_predict, Some(7));
    assert_eq!(p.options.temperature, Some(0.0));
    assert_eq!(p.options.stop, Some(vec!["x".to_string()]));
    assert_eq!(p.n, 2);
}

#[test]
fn out_of_range_fields_name_the_param() {
    for (v, param) in [
        (json!({"model": "m", "n": 0}), "n"),
        (json!({"model": "m", "max_tokens": 0}), "max_tokens"),
        (json!({"model": "m", "temperature": 3}), "temperature"),
        (json!({"model": "m", "stop": 5}), "stop"),
        (json!({}), "model"),
    ] {
        let err = plan(v).err().expect("invalid");
        assert_eq!(err.param, Some(param));
        assert_eq!(err.body()["error"]["type"], "invalid_request_error");
    }
}

#[test]
fn tool_choice_needs_tools_and_grammars_need_valid_schemas() {
    let req: ChatCompletionRequest = serde_json::from_value(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"})).expect("parses");
    assert_eq!(req.validate().err().expect("invalid").param, Some("tool_choice"));
    let req: ChatCompletionRequest = serde_json::from_value(json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}})).expect("parses");
    let err = req.validate().err().expect("invalid");
    assert_eq!(err.param, Some("response_format"));
    assert!(err.error.message.contains("schema.type"), "{}", err.error.message);
}
