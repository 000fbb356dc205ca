use super::locate::find_key;
use super::*;
use std::collections::HashMap;

const SHIPPED: &str = include_str!("../../../config/hearth.yaml");

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse_ok(text: &str) -> FileConfig {
    parse(text, "test.yaml", &no_env).expect("parses")
}

fn parse_err(text: &str) -> String {
    parse(text, "test.yaml", &no_env).expect_err("refused").to_string()
}

#[test]
fn shipped_config_parses() {
    let c = parse(SHIPPED, "config/hearth.yaml", &no_env).expect("shipped config parses");
    assert_eq!(c.server.host, Some("127.0.0.1:11434".parse().expect("addr")));
    assert_eq!(c.server.default_model.as_deref(), Some("smollm2:135m"));
    assert_eq!(c.engine.parallel, Some(4));
    assert_eq!(c.engine.keep_alive, Some(KeepAlive::For(Duration::from_secs(300))));
    assert_eq!(c.cache, crate::cache::CacheSettings::default());
    let pirate = c.persona("pirate").expect("example persona");
    assert_eq!(pirate.model, "smollm2:135m");
    assert!(pirate.system.as_deref().is_some_and(|s| s.contains("pirate")));
    assert!(pirate.options.temperature.is_some());
    assert!(!pirate.examples.is_empty());
    assert!(c.templates.contains_key("rag_query") && c.templates.contains_key("summarization"));
    assert_eq!(c.template("rag_query").expect("template").variables(None), vec!["context", "question"]);
    // The file shows the builtins as they are; this keeps the two from drifting apart.
    assert_eq!(c.templates, prompts::builtin());
}

/// The field names serde expects in a section, read back from its unknown-field message.
fn fields_of(section_yaml: &str) -> Vec<String> {
    let msg = parse_err(section_yaml);
    // serde writes "expected one of `a`, `b`, `c`", or "expected `a` or `b`" for two.
    let list = msg.split("expected ").nth(1).expect("a field list");
    let list = list.strip_prefix("one of ").unwrap_or(list);
    list.split(", ").flat_map(|f| f.split(" or ")).map(|f| f.trim_matches('`').to_string()).collect()
}

#[test]
fn shipped_config_shows_every_key() {
    let shipped: serde_yaml::Value = serde_yaml::from_str(SHIPPED).expect("yaml");
    let sections = [
        (vec![], "zz_probe: 1\n"),
        (vec!["server"], "server:\n  zz_probe: 1\n"),
        (vec!["engine"], "engine:\n  zz_probe: 1\n"),
        (vec!["cache"], "cache:\n  zz_probe: 1\n"),
        (vec!["pricing"], "pricing:\n  zz_probe: 1\n"),
        (vec!["auth"], "auth:\n  zz_probe: 1\n"),
        (vec!["pull"], "pull:\n  zz_probe: 1\n"),
        (vec!["personas", "pirate"], "personas:\n  p:\n    zz_probe: 1\n"),
        (vec!["providers", "lan"], "providers:\n  p:\n    zz_probe: 1\n"),
        (vec!["providers", "lan", "timeouts"], "providers:\n  p:\n    kind: ollama\n    url: http://x\n    timeouts:\n      zz_probe: 1\n"),
        (vec!["providers", "lan", "price"], "providers:\n  p:\n    kind: ollama\n    url: http://x\n    price:\n      zz_probe: 1\n"),
        (vec!["routes", "ab", "targets", "1"], "routes:\n  r:\n    strategy: split\n    targets:\n      - zz_probe: 1\n"),
        (vec!["routing"], "routing:\n  zz_probe: 1\n"),
        (vec!["database"], "database:\n  zz_probe: 1\n"),
        (vec!["routing", "breaker"], "routing:\n  breaker:\n    zz_probe: 1\n"),
    ];
    for (path, probe) in sections {
        let section = path.iter().fold(&shipped, |v, k| match k.parse::<usize>() { Ok(i) => &v[i], Err(_) => &v[*k] });
        // A fleet's keys are shown on the example fleet, the others on `lan`.
        let fleet = &shipped["providers"]["fleet"];
        for field in fields_of(probe) {
            let shown = section.get(field.as_str()).is_some() || (path == ["providers", "lan"] && fleet.get(field.as_str()).is_some());
            assert!(shown, "config/hearth.yaml lacks {path:?}.{field}");
        }
    }
}

#[test]
fn empty_file_gives_defaults_and_builtins() {
    let c = parse_ok("# nothing here\n");
    assert_eq!(c, FileConfig::default());
    assert_eq!(c.templates.len(), 2);
    let c = parse_ok("server:\npersonas:\ntemplates:\n");
    assert!(c.personas.is_empty());
}

#[test]
fn misspelt_key_names_line_and_path() {
    let text = "server:\n  host: 127.0.0.1:11434\npersonas:\n  pirate:\n    model: smollm2:135m\n    sytem: Arr\n";
    let err = parse(text, "config/hearth.yaml", &no_env).expect_err("refused");
    let msg = err.to_string();
    assert!(msg.starts_with("config/hearth.yaml:6:5: personas.pirate: unknown field `sytem`, expected one of `model`, `system`"), "{msg}");
    assert!(matches!(err, ConfigError::Invalid { line: Some(6), key: Some(ref k), .. } if k == "personas.pirate"));
    let msg = parse_err("sever:\n  host: x\n");
    assert!(msg.starts_with("test.yaml:1:1: unknown field `sever`"), "{msg}");
}

#[test]
fn bad_values_name_the_key() {
    let msg = parse_err("cache:\n  enabled: true\n  ttl: banana\n");
    assert!(msg.starts_with("test.yaml:3:8: cache.ttl: invalid duration \"banana\""), "{msg}");
    let msg = parse_err("engine:\n  parallel: 0\n");
    assert!(msg.starts_with("test.yaml:2:13: engine.parallel: invalid value \"0\": expected a whole number from 1 to 64"), "{msg}");
    let msg = parse_err("engine:\n  parallel: four\n");
    assert!(msg.contains("engine.parallel"), "{msg}");
    let msg = parse_err("server:\n  log_prompts: maybe\n");
    assert!(msg.starts_with("test.yaml:2:16: server.log_prompts: invalid type"), "{msg}");
    let msg = parse_err("pricing:\n  models:\n    \"smollm2:135m\": -1\n");
    assert!(msg.contains("pricing.models.smollm2:135m: invalid price \"-1\""), "{msg}");
    let msg = parse_err("cache:\n  max_bytes: 50%\n");
    assert!(msg.contains("cache.max_bytes: invalid size"), "{msg}");
    let msg = parse_err("server:\n  default_model: ../etc\n");
    assert!(msg.contains("server.default_model: invalid model name"), "{msg}");
    let msg = parse_err("cache:\n  redis_url: http://user:secret@host\n");
    assert!(msg.contains("cache.redis_url: invalid Redis URL") && !msg.contains("secret"), "{msg}");
}

#[test]
fn values_parse() {
    let c = parse_ok(
        "server:\n  request_timeout: 90\n  max_concurrent_requests: 8\n  log_format: json\n  models: ~/m\n\
         engine:\n  keep_alive: -1\n  ram_budget: 60%\n\
         cache:\n  ttl: 1h30m\n  max_bytes: 1GB\n  redis_url: redis://127.0.0.1:6379/0\n\
         pricing:\n  default_per_1k_tokens: 0.001\n  models:\n    smollm2: 0.5\n",
    );
    assert_eq!(c.server.request_timeout, Some(Duration::from_secs(90)));
    assert_eq!(c.server.max_concurrent_requests, Some(8));
    assert_eq!(c.server.log_format, Some(LogFormat::Json));
    if let Some(home) = dirs::home_dir() {
        assert_eq!(c.server.models, Some(home.join("m")));
    }
    assert_eq!(c.engine.keep_alive, Some(KeepAlive::Forever));
    assert_eq!(c.engine.ram_budget.as_deref(), Some("60%"));
    assert_eq!(c.cache.ttl, Duration::from_secs(5400));
    assert_eq!(c.cache.max_bytes, 1_000_000_000);
    assert_eq!(c.pricing.per_model.get("smollm2:latest"), Some(&0.5));
    assert_eq!(c.pricing.cost("smollm2:latest", 2000), 1.0);
    assert_eq!(c.pricing.cost("other:latest", 1000), 0.001);
}

#[test]
fn env_overlays_win_over_the_file() {
    let env: HashMap<&str, &str> = HashMap::from([
        ("REDIS_URL", "redis://cache.local:6380"),
        ("LLM_RESPONSE_CACHE_TTL", "120"),
        ("MAX_CONCURRENT_REQUESTS", "3"),
        ("REQUEST_TIMEOUT", "2m"),
        ("HEARTH_DATA", "/srv/hearth"),
    ]);
    let lookup = |k: &str| env.get(k).map(|v| v.to_string());
    let text = "server:\n  data: /var/lib/x\n  max_concurrent_requests: 10\n  request_timeout: 10m\ncache:\n  ttl: 1h\n  redis_url: redis://127.0.0.1\n";
    let c = parse(text, "t.yaml", &lookup).expect("parses");
    assert_eq!(c.cache.redis_url.as_deref(), Some("redis://cache.local:6380"));
    assert_eq!(c.cache.ttl, Duration::from_secs(120));
    assert_eq!(c.server.max_concurrent_requests, Some(3));
    assert_eq!(c.server.request_timeout, Some(Duration::from_secs(120)));
    assert_eq!(c.server.data, Some(PathBuf::from("/srv/hearth")));
    // An empty variable is unset: the file's value stays.
    let empty = |k: &str| (k == "LLM_RESPONSE_CACHE_TTL").then(String::new);
    assert_eq!(parse(text, "t.yaml", &empty).expect("parses").cache.ttl, Duration::from_secs(3600));
}

#[test]
fn bad_env_value_names_the_variable() {
    let env = |k: &str| (k == "LLM_RESPONSE_CACHE_TTL").then(|| "soon".to_string());
    let err = parse("", "t.yaml", &env).expect_err("refused");
    assert!(matches!(&err, ConfigError::Env { var, .. } if var == "LLM_RESPONSE_CACHE_TTL"));
    assert!(err.to_string().starts_with("environment variable LLM_RESPONSE_CACHE_TTL: invalid duration \"soon\""), "{err}");
    let env = |k: &str| (k == "MAX_CONCURRENT_REQUESTS").then(|| "-2".to_string());
    let err = parse("", "t.yaml", &env).expect_err("refused");
    assert!(err.to_string().contains("MAX_CONCURRENT_REQUESTS"), "{err}");
}

#[test]
fn persona_with_unknown_option_is_refused() {
    let text = "personas:\n  pirate:\n    model: smollm2:135m\n    system: Arr\n    options:\n      temperature: 0.7\n      temprature: 0.2\n";
    let msg = parse_err(text);
    assert_eq!(msg, "test.yaml:7:7: personas.pirate.options.temprature: unknown Ollama option `temprature`");
    let text = "personas:\n  pirate:\n    model: smollm2:135m\n    options: { top_p: 3 }\n";
    let msg = parse_err(text);
    assert_eq!(msg, "test.yaml:4:5: personas.pirate.options.top_p: must be between 0 and 1");
    let text = "personas:\n  pirate:\n    model: smollm2:135m\n    options:\n      temperature: hot\n";
    assert!(parse_err(text).starts_with("test.yaml:5:7: personas.pirate.options.temperature: invalid type"));
}

#[test]
fn persona_rules() {
    let c = parse_ok(
        "server:\n  default_model: smollm2:135m\npersonas:\n  Pirate-2:\n    system: Arr\n    stop: [\"\\nUser:\"]\n    examples:\n      - { role: user, content: hi }\n      - { role: assistant, content: arr }\n",
    );
    let p = c.persona("Pirate-2:latest").expect("persona");
    assert_eq!((p.name.as_str(), p.model.as_str()), ("Pirate-2:latest", "smollm2:135m"));
    assert_eq!(p.options.stop, Some(vec!["\nUser:".to_string()]));
    assert_eq!(p.examples[1], ("assistant".to_string(), "arr".to_string()));

    let msg = parse_err("personas:\n  pirate:\n    system: Arr\n");
    assert_eq!(msg, "test.yaml:2:3: personas.pirate: no model: set `model` here or `server.default_model`");
    let msg = parse_err("personas:\n  pirate:\n    model: m\n    system: \"  \"\n");
    assert!(msg.starts_with("test.yaml:4:5: personas.pirate.system: is empty"), "{msg}");
    let msg = parse_err("personas:\n  bad/name:\n    model: m\n");
    assert!(msg.starts_with("test.yaml:2:3: personas.bad/name: a persona name must be a valid model name"), "{msg}");
    let msg = parse_err("personas:\n  p:\n    model: m\n    examples:\n      - role: bot\n        content: x\n");
    assert!(msg.starts_with("test.yaml:5:15: personas.p.examples[0].role: unknown variant `bot`"), "{msg}");
    let msg = parse_err("personas:\n  p:\n    model: m\n  p:latest:\n    model: m\n");
    assert!(msg.contains("defined twice"), "{msg}");
}

#[test]
fn template_with_bad_placeholder_is_refused() {
    let text = "templates:\n  ask:\n    template: \"Q: {question\"\n";
    let msg = parse_err(text);
    assert!(msg.starts_with("test.yaml:3:5: templates.ask.template: template 'ask': '{' is never closed"), "{msg}");
    let text = "templates:\n  ask:\n    template: \"{q}\"\n    families:\n      llama: \"{1q}\"\n";
    let msg = parse_err(text);
    assert!(msg.starts_with("test.yaml:5:7: templates.ask.families.llama: "), "{msg}");
}

#[test]
fn file_templates_add_to_and_replace_builtins() {
    let c = parse_ok("templates:\n  summarization:\n    template: \"TL;DR {text}\"\n  ask:\n    template: \"{q}\"\n    description: d\n");
    assert_eq!(c.templates.len(), 3);
    let vars = BTreeMap::from([("text".to_string(), "x".to_string())]);
    assert_eq!(c.template("summarization").expect("t").render(None, &vars).expect("r"), "TL;DR x");
    assert!(c.template("nope").is_err());
}

#[test]
fn find_key_walks_indentation() {
    let text = "a:\n  b:\n    c: 1\n  c:\n    d: 2\n# c:\ne:\n  f: { g: 1 }\n";
    assert_eq!(find_key(text, &["a", "c"]), Some((4, 3)));
    assert_eq!(find_key(text, &["a", "b", "c"]), Some((3, 5)));
    assert_eq!(find_key(text, &["a", "c", "d"]), Some((5, 5)));
    assert_eq!(find_key(text, &["e", "f", "g"]), Some((8, 3)));
    assert_eq!(find_key(text, &["x"]), None);
}

#[test]
fn load_resolves_paths_against_the_file_and_checks_adapters() {
    let dir = std::env::temp_dir().join(format!("hearth-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("hearth.yaml");
    std::fs::write(&path, "server:\n  models: models\npersonas:\n  p:\n    model: m\n    adapter: lora.gguf\n").expect("write");
    let err = load(Some(&path), &no_env).expect_err("adapter missing");
    assert!(err.to_string().contains(":6:5: personas.p.adapter: "), "{err}");
    std::fs::write(dir.join("lora.gguf"), b"x").expect("write");
    let c = load(Some(&path), &no_env).expect("loads");
    assert_eq!(c.server.models, Some(dir.join("models")));
    assert_eq!(c.persona("p").and_then(|p| p.adapter.clone()), Some(dir.join("lora.gguf")));
    assert_eq!(c.source, Some(path.clone()));
    assert!(matches!(load(Some(&dir.join("missing.yaml")), &no_env), Err(ConfigError::Read { .. })));
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn hearth_host_and_data_are_read_over_the_file() {
    let env = |name: &str| match name {
        "HEARTH_HOST" => Some("0.0.0.0:9999".to_string()),
        "HEARTH_DATA" => Some("/srv/hearth".to_string()),
        _ => None,
    };
    let c = parse("server:\n  host: 127.0.0.1:1234\n  data: /elsewhere\n", "test.yaml", &env).expect("parses");
    assert_eq!(c.server.host.map(|h| h.to_string()).as_deref(), Some("0.0.0.0:9999"));
    assert_eq!(c.server.data.as_deref(), Some(std::path::Path::new("/srv/hearth")));
    let bad = |name: &str| (name == "HEARTH_HOST").then(|| "127.0.0.1:notaport".to_string());
    let err = parse("", "test.yaml", &bad).expect_err("bad address");
    assert!(err.to_string().starts_with("environment variable HEARTH_HOST: "), "{err}");
}
