//! A small renderer for the subset of Helm's template language the Nephilia chart uses,
//! so the tests can render the chart without a `helm` binary (none is packaged for the
//! machines this project builds on).
//!
//! Supported, with Go `text/template` semantics: text and `{{ … }}` actions with `{{-` /
//! `-}}` whitespace trimming; `{{/* comments */}}`; `define` / `include`; `if` / `else` /
//! `end` with Go truthiness; `range $var := <list>` / `end` over a list (`.` and `$var`
//! are the element, `$` stays the root); field chains from `.` or a variable
//! (`.Values.a.b`, `$.Release.Name`, `$node`); `.Capabilities.APIVersions.Has "group/v"`
//! (the API versions the render is given, as `helm template --api-versions`); string and
//! integer literals; pipelines with `quote`, `default`, `not`, `fail`, `toYaml`, `indent`
//! and `nindent` (as Helm's sprig functions define them; `toYaml` may quote or order keys
//! differently from Helm's, with the same YAML meaning, and the tests compare parsed
//! objects, not bytes). Anything else (`with`, `else if`, `range` over a map, `else` in a
//! `range`, assigning variables outside `range`, parentheses, other functions) panics with
//! the construct's name instead of rendering something Helm would not, so the chart cannot
//! drift outside what this renderer checks. Printing a missing value panics too, where
//! Helm would print an empty string: a typo in a values path fails the tests. `fail`
//! panics with its message, where `helm template` exits with it.

use std::{collections::HashMap, fs, path::Path};

use serde_json::{Map, Value};

/// The release a chart is rendered for, as `helm template NAME CHART -n NAMESPACE`.
pub struct Release<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
}

/// One rendered template file: its path under the chart and its text.
pub struct RenderedFile {
    pub template: String,
    pub text: String,
}

/// Renders every manifest template of the chart in `chart_dir` (files under `templates/`
/// ending in `.yaml`; `_*.tpl` only contribute `define`s, `NOTES.txt` is not a manifest),
/// with `values.yaml` overridden by `overrides` (dotted path → value, as `--set`).
pub fn render_chart(
    chart_dir: &Path,
    release: &Release<'_>,
    overrides: &[(&str, Value)],
) -> Vec<RenderedFile> {
    render_chart_for(chart_dir, release, overrides, &[])
}

/// [`render_chart`] for a cluster that also serves `api_versions` ("cert-manager.io/v1"),
/// as `helm template --api-versions` (or `helm install`, which asks the cluster).
pub fn render_chart_for(
    chart_dir: &Path,
    release: &Release<'_>,
    overrides: &[(&str, Value)],
    api_versions: &[&str],
) -> Vec<RenderedFile> {
    let chart: Value = read_yaml(&chart_dir.join("Chart.yaml"));
    let mut values: Value = read_yaml(&chart_dir.join("values.yaml"));
    for (path, value) in overrides {
        set_path(&mut values, path, value.clone());
    }
    let field = |name: &str| {
        chart
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("Chart.yaml has no {name}"))
    };
    let root = serde_json::json!({
        "Values": values,
        "Release": {
            "Name": release.name,
            "Namespace": release.namespace,
            "Service": "Helm",
        },
        "Chart": {
            "Name": field("name"),
            "Version": field("version"),
            "AppVersion": field("appVersion"),
        },
        "Capabilities": {
            "APIVersions": api_versions,
        },
    });

    let templates_dir = chart_dir.join("templates");
    let mut sources: Vec<(String, String)> = fs::read_dir(&templates_dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", templates_dir.display()))
        .map(|entry| {
            let path = entry.expect("directory entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("UTF-8 file name")
                .to_owned();
            let text = fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            (name, text)
        })
        .collect();
    sources.sort();

    let mut defines = HashMap::new();
    let mut manifests = Vec::new();
    for (name, text) in &sources {
        let nodes = parse(text, &mut defines, name);
        if name.ends_with(".yaml") && !name.starts_with('_') {
            manifests.push((name.clone(), nodes));
        }
    }
    let renderer = Renderer { defines };
    manifests
        .into_iter()
        .map(|(name, nodes)| {
            let mut text = String::new();
            renderer.render(&nodes, &Scope::new(&root), &mut text, &name);
            RenderedFile {
                template: format!("templates/{name}"),
                text,
            }
        })
        .collect()
}

fn read_yaml(path: &Path) -> Value {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn set_path(values: &mut Value, path: &str, value: Value) {
    let mut current = values;
    let mut keys = path.split('.').peekable();
    while let Some(key) = keys.next() {
        let map = current
            .as_object_mut()
            .unwrap_or_else(|| panic!("--set {path}: {key} is under a non-map value"));
        if keys.peek().is_none() {
            map.insert(key.to_owned(), value);
            return;
        }
        current = map
            .entry(key.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

#[derive(Debug)]
enum Node {
    Text(String),
    Output(Pipeline),
    If {
        condition: Pipeline,
        then: Vec<Node>,
        otherwise: Vec<Node>,
    },
    /// `range $variable := list`: `body` once per element of a list.
    Range {
        variable: Option<String>,
        list: Pipeline,
        body: Vec<Node>,
    },
}

type Pipeline = Vec<Vec<Operand>>;

#[derive(Debug, Clone)]
enum Operand {
    /// `.a.b.c`; `.` alone is the empty chain.
    Field(Vec<String>),
    /// `$name.a.b`; `$` (empty name) is the root.
    Variable(String, Vec<String>),
    Str(String),
    Int(i64),
    Function(String),
}

/// Splits text into literal text and actions, applying `{{-` and `-}}` trimming.
fn lex(source: &str, template: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut rest = source;
    let mut trim_next = false;
    while !rest.is_empty() {
        let (text, after) = match rest.find("{{") {
            Some(start) => (&rest[..start], Some(&rest[start + 2..])),
            None => (rest, None),
        };
        let mut text = text.to_owned();
        if trim_next {
            text = text.trim_start().to_owned();
        }
        let Some(after) = after else {
            tokens.push(Token::Text(text));
            break;
        };
        let trim_before = after.starts_with("- ") || after.starts_with("-\n");
        if trim_before {
            text = text.trim_end().to_owned();
        }
        tokens.push(Token::Text(text));
        let end = after
            .find("}}")
            .unwrap_or_else(|| panic!("{template}: unclosed action"));
        let mut inner = &after[..end];
        if trim_before {
            inner = &inner[1..];
        }
        trim_next = inner.ends_with(" -") || inner.ends_with("\n-");
        if trim_next {
            inner = &inner[..inner.len() - 1];
        }
        let inner = inner.trim();
        if !(inner.starts_with("/*") && inner.ends_with("*/")) {
            tokens.push(Token::Action(inner.to_owned()));
        }
        rest = &after[end + 2..];
    }
    tokens
}

enum Token {
    Text(String),
    Action(String),
}

/// Builds the node tree of one file; `define` blocks go to `defines`.
fn parse(source: &str, defines: &mut HashMap<String, Vec<Node>>, template: &str) -> Vec<Node> {
    let tokens = lex(source, template);
    let mut tokens = tokens.into_iter();
    let (nodes, end) = parse_block(&mut tokens, defines, template);
    assert!(
        end.is_none(),
        "{template}: {{{{ {end:?} }}}} without a block"
    );
    nodes
}

/// What closed a block.
#[derive(Debug, PartialEq)]
enum BlockEnd {
    Else,
    End,
}

fn parse_block(
    tokens: &mut impl Iterator<Item = Token>,
    defines: &mut HashMap<String, Vec<Node>>,
    template: &str,
) -> (Vec<Node>, Option<BlockEnd>) {
    let mut nodes = Vec::new();
    while let Some(token) = tokens.next() {
        let action = match token {
            Token::Text(text) => {
                if !text.is_empty() {
                    nodes.push(Node::Text(text));
                }
                continue;
            }
            Token::Action(action) => action,
        };
        let (keyword, rest) = action
            .split_once(char::is_whitespace)
            .map_or((action.as_str(), ""), |(k, r)| (k, r.trim()));
        match keyword {
            "end" => return (nodes, Some(BlockEnd::End)),
            "else" if rest.is_empty() => return (nodes, Some(BlockEnd::Else)),
            "if" => {
                let condition = parse_pipeline(rest, template);
                let (then, end) = parse_block(tokens, defines, template);
                let otherwise = match end {
                    Some(BlockEnd::End) => Vec::new(),
                    Some(BlockEnd::Else) => {
                        let (otherwise, end) = parse_block(tokens, defines, template);
                        assert_eq!(end, Some(BlockEnd::End), "{template}: if/else without end");
                        otherwise
                    }
                    None => panic!("{template}: if without end"),
                };
                nodes.push(Node::If {
                    condition,
                    then,
                    otherwise,
                });
            }
            "define" => {
                let name = match parse_pipeline(rest, template).as_slice() {
                    [command] => match command.as_slice() {
                        [Operand::Str(name)] => name.clone(),
                        _ => panic!("{template}: define takes one string"),
                    },
                    _ => panic!("{template}: define takes one string"),
                };
                let (body, end) = parse_block(tokens, defines, template);
                assert_eq!(end, Some(BlockEnd::End), "{template}: define without end");
                defines.insert(name, body);
            }
            "range" => {
                let (variable, list) = match rest.split_once(":=") {
                    Some((variable, list)) => {
                        let variable = variable.trim().strip_prefix('$').unwrap_or_else(|| {
                            panic!("{template}: `{action}` is outside the subset this renderer supports")
                        });
                        assert!(
                            !variable.is_empty()
                                && variable.chars().all(|c| c.is_ascii_alphanumeric()),
                            "{template}: `{action}` is outside the subset this renderer supports"
                        );
                        (Some(variable.to_owned()), list)
                    }
                    None => (None, rest),
                };
                let list = parse_pipeline(list, template);
                let (body, end) = parse_block(tokens, defines, template);
                assert_eq!(
                    end,
                    Some(BlockEnd::End),
                    "{template}: `range` with `else` is outside the subset this renderer supports"
                );
                nodes.push(Node::Range {
                    variable,
                    list,
                    body,
                });
            }
            "else" | "with" | "template" | "block" | "break" | "continue" => {
                panic!("{template}: `{action}` is outside the subset this renderer supports")
            }
            _ => nodes.push(Node::Output(parse_pipeline(&action, template))),
        }
    }
    (nodes, None)
}

fn parse_pipeline(source: &str, template: &str) -> Pipeline {
    let mut commands = vec![Vec::new()];
    let mut chars = source.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '|' {
            chars.next();
            commands.push(Vec::new());
        } else if c == '"' {
            chars.next();
            let mut literal = String::new();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('n') => literal.push('\n'),
                        Some(escaped @ ('"' | '\\')) => literal.push(escaped),
                        other => panic!("{template}: unsupported escape \\{other:?}"),
                    },
                    Some(c) => literal.push(c),
                    None => panic!("{template}: unterminated string in {source:?}"),
                }
            }
            commands
                .last_mut()
                .expect("a command")
                .push(Operand::Str(literal));
        } else {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == '|' {
                    break;
                }
                word.push(c);
                chars.next();
            }
            let operand = if let Some(variable) = word.strip_prefix('$') {
                let mut parts = variable.split('.');
                let name = parts.next().unwrap_or_default().to_owned();
                Operand::Variable(name, parts.map(str::to_owned).collect())
            } else if let Some(path) = word.strip_prefix('.') {
                Operand::Field(if path.is_empty() {
                    Vec::new()
                } else {
                    path.split('.').map(str::to_owned).collect()
                })
            } else if let Ok(number) = word.parse() {
                Operand::Int(number)
            } else if word.chars().all(|c| c.is_ascii_alphanumeric()) {
                Operand::Function(word)
            } else {
                panic!("{template}: `{word}` in {source:?} is outside the supported subset")
            };
            commands.last_mut().expect("a command").push(operand);
        }
    }
    assert!(
        commands.iter().all(|c| !c.is_empty()),
        "{template}: empty command in {source:?}"
    );
    commands
}

struct Renderer {
    defines: HashMap<String, Vec<Node>>,
}

/// `.` and the variables where a template is being rendered; `$` (the empty name) is the
/// value the template was executed with.
struct Scope<'a> {
    dot: &'a Value,
    variables: HashMap<String, &'a Value>,
}

impl<'a> Scope<'a> {
    fn new(root: &'a Value) -> Self {
        Self {
            dot: root,
            variables: HashMap::from([(String::new(), root)]),
        }
    }
}

impl Renderer {
    fn render(&self, nodes: &[Node], scope: &Scope<'_>, out: &mut String, template: &str) {
        for node in nodes {
            match node {
                Node::Text(text) => out.push_str(text),
                Node::Output(pipeline) => {
                    let value = self.eval(pipeline, scope, template);
                    out.push_str(&print(&value, template, pipeline));
                }
                Node::If {
                    condition,
                    then,
                    otherwise,
                } => {
                    let branch = if truthy(&self.eval(condition, scope, template)) {
                        then
                    } else {
                        otherwise
                    };
                    self.render(branch, scope, out, template);
                }
                Node::Range {
                    variable,
                    list,
                    body,
                } => {
                    let list = self.eval(list, scope, template);
                    let elements = match &list {
                        Value::Array(elements) => elements.as_slice(),
                        Value::Null => &[],
                        other => panic!(
                            "{template}: range over {other} is outside the subset this renderer supports"
                        ),
                    };
                    for element in elements {
                        let mut variables: HashMap<String, &Value> = scope.variables.clone();
                        if let Some(variable) = variable {
                            variables.insert(variable.clone(), element);
                        }
                        let inner = Scope {
                            dot: element,
                            variables,
                        };
                        self.render(body, &inner, out, template);
                    }
                }
            }
        }
    }

    fn eval(&self, pipeline: &Pipeline, scope: &Scope<'_>, template: &str) -> Value {
        let mut piped: Option<Value> = None;
        for command in pipeline {
            let value = match command.as_slice() {
                // Helm's `.Capabilities.APIVersions.Has "group/version"`.
                [Operand::Field(path), Operand::Str(version)]
                    if path.as_slice() == ["Capabilities", "APIVersions", "Has"]
                        && piped.is_none() =>
                {
                    let served = &scope.variables[""]["Capabilities"]["APIVersions"];
                    Value::Bool(
                        served
                            .as_array()
                            .is_some_and(|v| v.iter().any(|s| s == version.as_str())),
                    )
                }
                [Operand::Function(name), args @ ..] => {
                    let mut args: Vec<Value> = args
                        .iter()
                        .map(|arg| self.operand(arg, scope, template))
                        .collect();
                    args.extend(piped.take());
                    self.call(name, &args, template)
                }
                [operand] if piped.is_none() => self.operand(operand, scope, template),
                _ => panic!("{template}: cannot evaluate {command:?}"),
            };
            piped = Some(value);
        }
        piped.expect("a pipeline has a command")
    }

    fn operand(&self, operand: &Operand, scope: &Scope<'_>, template: &str) -> Value {
        let follow = |start: &Value, path: &[String]| {
            path.iter()
                .try_fold(start, |value, key| value.get(key))
                .cloned()
                .unwrap_or(Value::Null)
        };
        match operand {
            Operand::Field(path) => follow(scope.dot, path),
            Operand::Variable(name, path) => {
                let start = scope
                    .variables
                    .get(name)
                    .unwrap_or_else(|| panic!("{template}: undefined variable ${name}"));
                follow(start, path)
            }
            Operand::Str(s) => Value::String(s.clone()),
            Operand::Int(n) => Value::from(*n),
            Operand::Function(name) => self.call(name, &[], template),
        }
    }

    fn call(&self, name: &str, args: &[Value], template: &str) -> Value {
        let arity = |n: usize| {
            assert_eq!(
                args.len(),
                n,
                "{template}: {name} takes {n} arguments, got {args:?}"
            );
        };
        match name {
            "quote" => {
                let quoted: Vec<String> = args
                    .iter()
                    .map(|arg| format!("{:?}", print_scalar(arg, template)))
                    .collect();
                Value::String(quoted.join(" "))
            }
            "default" => {
                arity(2);
                if truthy(&args[1]) {
                    args[1].clone()
                } else {
                    args[0].clone()
                }
            }
            "include" => {
                arity(2);
                let define = args[0].as_str().expect("include takes a template name");
                let body = self
                    .defines
                    .get(define)
                    .unwrap_or_else(|| panic!("{template}: no define {define:?}"));
                let mut out = String::new();
                self.render(body, &Scope::new(&args[1]), &mut out, template);
                Value::String(out)
            }
            "not" => {
                arity(1);
                Value::Bool(!truthy(&args[0]))
            }
            "fail" => {
                arity(1);
                panic!("{template}: fail: {}", print_scalar(&args[0], template))
            }
            "toYaml" => {
                arity(1);
                let yaml = serde_yaml_ng::to_string(&args[0])
                    .unwrap_or_else(|e| panic!("{template}: toYaml: {e}"));
                Value::String(yaml.trim_end_matches('\n').to_owned())
            }
            "indent" | "nindent" => {
                arity(2);
                let width = args[0].as_u64().expect("indent width") as usize;
                let pad = " ".repeat(width);
                let text = print_scalar(&args[1], template);
                let indented = format!("{pad}{}", text.replace('\n', &format!("\n{pad}")));
                Value::String(if name == "nindent" {
                    format!("\n{indented}")
                } else {
                    indented
                })
            }
            _ => panic!("{template}: function {name} is outside the supported subset"),
        }
    }
}

/// Go's truthiness: false, 0, "", nil and empty collections are false.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn print(value: &Value, template: &str, pipeline: &Pipeline) -> String {
    assert!(
        !value.is_null(),
        "{template}: {pipeline:?} has no value (a misspelt values path?)"
    );
    print_scalar(value, template)
}

/// `%v` of a scalar.
fn print_scalar(value: &Value, template: &str) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
        Value::Array(_) | Value::Object(_) => {
            panic!("{template}: printing a collection without toYaml: {value}")
        }
    }
}

#[cfg(test)]
mod tests {
    //! The renderer against outputs Go's text/template and Helm give for the same input.
    use serde_json::{Value, json};

    use super::{HashMap, Renderer, Scope, parse};

    fn render(source: &str, dot: &Value) -> String {
        let mut defines = HashMap::new();
        let nodes = parse(source, &mut defines, "test");
        let mut out = String::new();
        Renderer { defines }.render(&nodes, &Scope::new(dot), &mut out, "test");
        out
    }

    #[test]
    fn trim_markers_remove_whitespace_and_newlines_on_their_side_only() {
        let dot = json!({"x": "X"});
        assert_eq!(render("a  \n  {{- .x -}}  \n b", &dot), "aXb");
        assert_eq!(render("a \n{{- .x }} \nb", &dot), "aX \nb");
        assert_eq!(render("a\n{{ .x -}}\n  b", &dot), "a\nXb");
        assert_eq!(
            render("a{{/* gone */}}b\n{{- /* gone */ -}}\nc", &dot),
            "abc"
        );
    }

    #[test]
    fn if_follows_go_truthiness() {
        let template = "{{ if .t }}yes{{ else }}no{{ end }}";
        for (t, expected) in [
            (json!(false), "no"),
            (json!(""), "no"),
            (json!(0), "no"),
            (json!([]), "no"),
            (Value::Null, "no"),
            (json!("x"), "yes"),
            (json!([1]), "yes"),
            (json!(true), "yes"),
        ] {
            assert_eq!(render(template, &json!({ "t": t })), expected, "{t}");
        }
        assert_eq!(render(template, &json!({})), "no", "missing key");
    }

    #[test]
    fn include_nindent_default_quote_and_to_yaml_match_helm() {
        let source = concat!(
            "{{- define \"labels\" -}}\nk: v\nn: {{ .n }}\n{{- end }}\n",
            "m:\n  {{- include \"labels\" . | nindent 2 }}\n",
            "tag: {{ .tag | default \"1.0\" }}/{{ .other | default \"1.0\" }}\n",
            "port: {{ .n | quote }}\n",
            "r:\n  {{- toYaml .r | nindent 2 }}\n",
        );
        let dot = json!({"n": 9697, "tag": "", "other": "2.0", "r": {"cpu": "1", "list": ["a"]}});
        assert_eq!(
            render(source, &dot),
            // The newline after a define's `end` stays, as in Go. toYaml quotes "1" with
            // single quotes where Helm uses double ones: the same YAML value.
            "\nm:\n  k: v\n  n: 9697\ntag: 1.0/2.0\nport: \"9697\"\nr:\n  cpu: '1'\n  list:\n  - a\n"
        );
    }

    #[test]
    fn range_binds_dot_and_its_variable_to_each_element_and_keeps_the_root_as_dollar() {
        let source = concat!(
            "{{- range $node := .Values.nodes }}\n- {{ $.Release.Name }}-{{ $node }}/{{ . }}",
            "{{- end }}\n{{ range .Values.none }}never{{ end }}",
            "{{- if .Capabilities.APIVersions.Has \"cert-manager.io/v1\" }}cm{{ end }}",
            "{{- if not .Values.none }} none{{ end }}",
        );
        let dot = json!({
            "Values": {"nodes": ["a", "b"], "none": []},
            "Release": {"Name": "r"},
            "Capabilities": {"APIVersions": ["cert-manager.io/v1"]},
        });
        assert_eq!(render(source, &dot), "\n- r-a/a\n- r-b/b\ncm none");
        let mut without = dot.clone();
        without["Capabilities"]["APIVersions"] = json!([]);
        assert_eq!(render(source, &without), "\n- r-a/a\n- r-b/b\n none");
    }

    #[test]
    #[should_panic(expected = "outside the subset")]
    fn constructs_outside_the_subset_are_refused() {
        render("{{ with .x }}{{ end }}", &json!({"x": [1]}));
    }

    #[test]
    #[should_panic(expected = "fail: no nodes")]
    fn fail_stops_the_render_with_its_message() {
        render("{{ fail \"no nodes\" }}", &json!({}));
    }

    #[test]
    #[should_panic(expected = "has no value")]
    fn printing_a_missing_value_fails() {
        render("{{ .Values.misspelt }}", &json!({"Values": {}}));
    }
}
