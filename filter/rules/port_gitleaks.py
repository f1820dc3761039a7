#!/usr/bin/env python3
"""Regenerates filter/rules/testdata/gitleaks_cases.toml from a gitleaks checkout.

    python3 filter/rules/port_gitleaks.py /path/to/gitleaks > filter/rules/testdata/gitleaks_cases.toml

gitleaks keeps, next to each rule in cmd/generate/config/rules/*.go, the strings its rule must
find (`tps`) and must not find (`fps`). This script evaluates those Go expressions (string
literals, `+`, `fmt.Sprintf`, `append`, `utils.GenerateSampleSecrets`, `secrets.NewSecret`
over the `utils.*` character classes) without Go, and writes every case it can evaluate as
data for filter/core/tests/rules_gitleaks.rs.

Test data stays synthetic: gitleaks' true positives include tokens copied from public
repositories, so in every true positive the characters after the rule's keyword are
replaced by deterministic pseudo-random ones of the same class (digit, a-f, g-z, A-F, G-Z),
and the case is kept only if gitleaks' own regex still matches it. Random secrets
(`secrets.NewSecret`) are drawn from a seeded generator, so the file is reproducible.
False positives are kept as written (they hold no secret by definition).
"""

import random
import re
import sre_constants as C
import sre_parse
import sys
import tomllib
from pathlib import Path

# ---------------------------------------------------------------- Go tokens and expressions

TOKEN = re.compile(
    r"""(?P<ws>[ \t\r]+)|(?P<nl>\n)|(?P<lc>//[^\n]*)|(?P<bc>/\*.*?\*/)
    |(?P<raw>`[^`]*`)|(?P<str>"(?:\\.|[^"\\\n])*")|(?P<chr>'(?:\\.|[^'\\])')
    |(?P<num>\d+)|(?P<id>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>\.\.\.|:=|[-+*/%=(){}\[\],.:;<>!&|])""",
    re.S | re.X,
)


def tokens(src):
    out, i = [], 0
    while i < len(src):
        m = TOKEN.match(src, i)
        if not m:
            raise ValueError(f"cannot tokenise at {src[i:i+20]!r}")
        i = m.end()
        kind = m.lastgroup
        if kind in ("ws", "lc", "bc"):
            if kind == "bc" and "\n" in m.group():
                out.append(("nl", "\n"))
            continue
        out.append((kind, m.group()))
    return out


def go_string(tok):
    kind, text = tok
    if kind == "raw":
        return text[1:-1]
    body = text[1:-1]
    # Go escapes are close enough to Python's for these files.
    return bytes(body, "utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8")


class Unsupported(Exception):
    pass


class Evaluator:
    def __init__(self, rng):
        self.rng = rng
        self.env = {}

    def parse(self, toks):
        self.toks, self.i = toks, 0
        v = self.expr()
        return v

    def peek(self, k=0):
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else ("eof", "")

    def skip_nl(self):
        while self.peek()[0] == "nl":
            self.i += 1

    def take(self, text=None):
        self.skip_nl()
        t = self.peek()
        if text is not None and t[1] != text:
            raise Unsupported(f"expected {text!r}, got {t[1]!r}")
        self.i += 1
        return t

    def expr(self):
        v = self.primary()
        while True:
            save = self.i
            self.skip_nl()
            if self.peek()[1] == "+":
                self.i += 1
                self.skip_nl()
                r = self.primary()
                if isinstance(v, str) and isinstance(r, str):
                    v = v + r
                else:
                    raise Unsupported("+ on non-strings")
            else:
                self.i = save
                return v

    def args(self):
        self.take("(")
        out = []
        while True:
            self.skip_nl()
            if self.peek()[1] == ")":
                self.i += 1
                return out
            out.append(self.expr())
            self.skip_nl()
            if self.peek()[1] == "...":
                self.i += 1
            self.skip_nl()
            if self.peek()[1] == ",":
                self.i += 1

    def composite(self, is_map):
        self.take("{")
        out = []
        while True:
            self.skip_nl()
            if self.peek()[1] == "}":
                self.i += 1
                return out
            v = self.expr()
            self.skip_nl()
            if is_map and self.peek()[1] == ":":
                self.i += 1
                v = self.expr()
            out.append(v)
            self.skip_nl()
            if self.peek()[1] == ",":
                self.i += 1

    def primary(self):
        self.skip_nl()
        t = self.peek()
        if t[0] in ("str", "raw"):
            self.i += 1
            return go_string(t)
        if t[1] == "(":
            self.i += 1
            v = self.expr()
            self.take(")")
            return v
        if t[1] == "[":
            # []string{...}
            self.take("[")
            self.take("]")
            self.take("string")
            return self.composite(False)
        if t[1] == "map":
            self.take("map")
            self.take("[")
            self.take("string")
            self.take("]")
            self.take("string")
            return self.composite(True)
        if t[0] == "num":
            self.i += 1
            return int(t[1])
        if t[0] == "id":
            name = t[1]
            self.i += 1
            while self.peek()[1] == "." and self.peek(1)[0] == "id":
                name += "." + self.peek(1)[1]
                self.i += 2
            if self.peek()[1] == "(":
                return self.call(name, self.args())
            if name in self.env:
                return self.env[name]
            if name in ("r", "nil"):
                return None
            raise Unsupported(f"unknown name {name}")
        raise Unsupported(f"unexpected {t[1]!r}")

    last_validate = None

    def call(self, name, a):
        classes = {
            "utils.Numeric": "[0-9]{%s}",
            "utils.Hex": "[a-f0-9]{%s}",
            "utils.AlphaNumeric": "[a-z0-9]{%s}",
            "utils.AlphaNumericExtendedShort": "[a-z0-9_-]{%s}",
            "utils.AlphaNumericExtended": "[a-z0-9=_\\-]{%s}",
            "utils.AlphaNumericExtendedLong": "[a-z0-9\\/=_\\+\\-]{%s}",
        }
        if name in classes:
            return classes[name] % a[0]
        if name in ("utils.Validate", "utils.ValidateWithPaths"):
            self.last_validate = a
            return None
        if name == "utils.Hex8_4_4_4_12":
            return "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
        if name == "secrets.NewSecret":
            return generate(a[0], self.rng)
        if name == "utils.GenerateSampleSecrets":
            return sample_secrets(a[0], a[1])
        if name == "utils.GenerateSampleSecret":
            return f'{a[0]}_api_token = "{a[1]}"'
        if name == "append":
            out = list(a[0])
            for x in a[1:]:
                out.extend(x if isinstance(x, list) else [x])
            return out
        if name == "fmt.Sprintf":
            fmt, rest = a[0], list(a[1:])
            return re.sub(r"%[sdq]", lambda m: (f'"{rest.pop(0)}"' if m.group() == "%q" else str(rest.pop(0))), fmt)
        if name == "strings.Repeat":
            return a[0] * a[1]
        if name in ("strings.ToUpper",):
            return a[0].upper()
        if name in ("regexp.MustCompile",):
            return a[0]
        raise Unsupported(f"call {name}")


SAMPLES = [
    '{i}Token="{s}"', '{i}Token = "{s}"', "{i}Token={s}", "{i}Token = {s}",
    '{\n    "{i}_token": "{s}"\n}', '{"config.ini": "{I}_TOKEN={s}\\nBACKUP_ENABLED=true"}',
    "<{i}Token>\n    {s}\n</{i}Token>", "{i}_token: {s}", "{i}_token: '{s}'", '{i}_token: "{s}"',
    'string {i}Token = "{s}";', 'var {i}Token string = "{s}"', '{i}Token := "{s}"',
    "{i}Token := `{s}`", 'String {i}Token = "{s}";', 'var {i}Token = "{s}"', '${i}Token .= "{s}"',
    "{i}Token = '{s}'", '{i}Token = "{s}"', 'System.setProperty("{I}_TOKEN", "{s}")',
    '  "{i}Token" => "{s}"', '{i}_TOKEN = "{s}"', '{i}_TOKEN := "{s}"', '{i}_TOKEN ::= "{s}"',
    '{i}_TOKEN :::= "{s}"', '{i}_TOKEN ?= "{s}"',
]


def sample_secrets(ident, secret):
    return [t.replace("{i}", ident).replace("{I}", ident.upper()).replace("{s}", secret) for t in SAMPLES]


# ---------------------------------------------------------------- regex → random string


def py_pattern(go):
    p = go.replace("(?-i:", "(?:").replace("\\z", "\\Z")
    p = re.sub(r"\(\?[ims]+\)", "", p)
    p = re.sub(r"\(\?[ims]+:", "(?:", p)
    p = p.replace("[[:alnum:]]", "[A-Za-z0-9]").replace("[:alnum:]", "A-Za-z0-9")
    return p


def generate(go_regex, rng):
    tree = sre_parse.parse(py_pattern(go_regex))
    return "".join(gen_seq(tree, rng))


PRINTABLE = [chr(c) for c in range(0x21, 0x7F)]


def gen_set(items, rng):
    neg = False
    chars = []
    for op, av in items:
        if op is C.NEGATE:
            neg = True
        elif op is C.LITERAL:
            chars.append(chr(av))
        elif op is C.RANGE:
            chars.extend(chr(c) for c in range(av[0], av[1] + 1))
        elif op is C.CATEGORY:
            chars.extend(category(av))
    if neg:
        chars = [c for c in PRINTABLE if c not in chars]
    return rng.choice(chars)


def category(cat):
    if cat is C.CATEGORY_DIGIT:
        return list("0123456789")
    if cat is C.CATEGORY_WORD:
        return list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
    if cat is C.CATEGORY_SPACE:
        return [" "]
    if cat is C.CATEGORY_NOT_SPACE:
        return list("abcdefXYZ0123")
    return list("abc")


def gen_seq(seq, rng):
    out = []
    for op, av in seq:
        if op is C.LITERAL:
            out.append(chr(av))
        elif op is C.NOT_LITERAL:
            out.append(rng.choice([c for c in "abcXYZ019" if ord(c) != av]))
        elif op is C.ANY:
            out.append(rng.choice("abcXYZ019"))
        elif op is C.IN:
            out.append(gen_set(av, rng))
        elif op in (C.MAX_REPEAT, C.MIN_REPEAT):
            lo, hi, sub = av
            if hi == C.MAXREPEAT:
                hi = lo + 16
            n = rng.randint(lo, hi)
            for _ in range(n):
                out.extend(gen_seq(sub, rng))
        elif op is C.SUBPATTERN:
            out.extend(gen_seq(av[3], rng))
        elif op is C.BRANCH:
            out.extend(gen_seq(rng.choice(av[1]), rng))
        elif op is C.CATEGORY:
            out.append(rng.choice(category(av)))
        elif op is C.AT:
            pass
        else:
            raise Unsupported(f"regex op {op}")
    return out


# ---------------------------------------------------------------- statements of a rule function


def statements(toks):
    """Splits a function body into statements: newline at depth 0 unless the line continues."""
    out, cur, depth = [], [], 0
    for t in toks:
        if t[1] in "([{" and t[0] == "op":
            depth += 1
        elif t[1] in ")]}" and t[0] == "op":
            depth -= 1
        if t[0] == "nl" and depth == 0 and (not cur or cur[-1][1] not in ("+", ",", "(", "{")):
            if cur:
                out.append(cur)
            cur = []
            continue
        cur.append(t)
    if cur:
        out.append(cur)
    return out


def functions(src):
    """(name, body tokens) of every `func Name() *config.Rule { … }` in a Go file."""
    toks = tokens(src)
    head = ["func", None, "(", ")", "*", "config", ".", "Rule", "{"]
    i = 0
    while i < len(toks):
        if all(h is None or toks[i + k][1] == h for k, h in enumerate(head) if i + k < len(toks)) and i + len(head) < len(toks):
            name, j, depth = toks[i + 1][1], i + len(head), 1
            start = j
            while depth:
                if toks[j][0] == "op" and toks[j][1] == "{":
                    depth += 1
                elif toks[j][0] == "op" and toks[j][1] == "}":
                    depth -= 1
                j += 1
            yield name, toks[start : j - 1]
            i = j
        else:
            i += 1


def evaluate_rule(body, rng):
    ev = Evaluator(rng)
    rule_id = None
    for k, t in enumerate(body):
        if t[1] == "RuleID" and body[k + 1][1] == ":":
            rule_id = go_string(body[k + 2])
            break
    tps, fps, skipped = [], [], []
    for st in statements(body):
        texts = [t[1] for t in st]
        if texts[:4] == ["return", "utils", ".", "Validate"] or texts[:4] == ["return", "utils", ".", "ValidateWithPaths"]:
            # `return utils.Validate(r, tps, fps)`: cases may be written inline there.
            try:
                ev.parse(st[4:])
            except Unsupported:
                pass
            args = ev.last_validate
            if args and len(args) == 3:
                if isinstance(args[1], list) and not tps:
                    tps = list(args[1])
                if isinstance(args[2], list) and not fps:
                    fps = list(args[2])
            continue
        if len(st) < 3 or st[0][0] != "id":
            continue
        if texts[0] == "var":
            st, texts = st[1:], texts[1:]
        name = texts[0]
        if texts[1] not in (":=", "="):
            continue
        if name == "r" or texts[2] == "config":
            continue
        try:
            val = ev.parse(st[2:])
        except (Unsupported, IndexError, KeyError, ValueError, TypeError) as e:
            if name in ("tps", "fps"):
                skipped.append(f"{name}: {e}")
            continue
        ev.env[name] = val
        if name == "tps":
            tps = list(val) if isinstance(val, list) else [val]
        elif name == "fps":
            fps = list(val) if isinstance(val, list) else [val]
    return rule_id, tps, fps, skipped


# ---------------------------------------------------------------- synthetic true positives


def scramble(text, keep_until, rng):
    out = list(text)
    for j in range(keep_until, len(out)):
        c = out[j]
        if c.isdigit():
            out[j] = rng.choice("0123456789")
        elif "a" <= c <= "f":
            out[j] = rng.choice("abcdef")
        elif "g" <= c <= "z":
            out[j] = rng.choice("ghijklmnopqrstuvwxyz")
        elif "A" <= c <= "F":
            out[j] = rng.choice("ABCDEF")
        elif "G" <= c <= "Z":
            out[j] = rng.choice("GHIJKLMNOPQRSTUVWXYZ")
    return "".join(out)


def synthetic(tp, rule, rng):
    """The true positive with its secret's characters after the keyword re-drawn."""
    if "regex" not in rule:
        return None  # a path-only rule (file names), nothing in text to find
    try:
        rx = re.compile(py_pattern(rule["regex"]), re.I if "(?i)" in rule["regex"] else 0)
    except re.error:
        return None
    m = rx.search(tp)
    if not m:
        return None
    g = 1 if m.re.groups >= 1 and m.group(1) else 0
    start, end = m.span(g)
    secret = tp[start:end].lower()
    keep = 0
    for kw in rule.get("keywords", []):
        k = secret.find(kw)
        if k >= 0:
            keep = max(keep, k + len(kw))
    # Keep at least a short prefix: many formats open with fixed letters.
    keep = max(keep, min(4, (end - start) // 4))
    new = tp[:start] + scramble(tp[start:end], keep, rng) + tp[end:]
    # The rest of the line may hold another copy of the value: re-draw it the same way.
    if rx.search(new):
        return new
    return None


def toml_str(s):
    out = []
    for c in s:
        if c == "\\":
            out.append("\\\\")
        elif c == '"':
            out.append('\\"')
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def main():
    root = Path(sys.argv[1])
    config = tomllib.loads((root / "config/gitleaks.toml").read_text())
    rules = {r["id"]: r for r in config["rules"]}
    commit = sys.argv[2] if len(sys.argv) > 2 else "unknown"
    print("# True-positive and false-positive cases of gitleaks' rules (cmd/generate/config/rules/*.go),")
    print(f"# gitleaks commit {commit}, evaluated by filter/rules/port_gitleaks.py.")
    print("# True positives are made synthetic (characters after the keyword re-drawn, same class).")
    print("# `rule` is gitleaks' id; filter/rules/README.md maps it to ours.")
    print()
    total_tp = total_fp = 0
    notes = []
    for path in sorted((root / "cmd/generate/config/rules").glob("*.go")):
        if path.name.endswith("_test.go"):
            continue
        src = path.read_text()
        for fname, body in functions(src):
            rng = random.Random(f"{path.name}:{fname}")
            rid, tps, fps, skipped = evaluate_rule(body, rng)
            if rid is None or rid not in rules:
                continue
            kept_tp, dropped = [], 0
            for tp in tps:
                s = synthetic(tp, rules[rid], rng)
                if s is None:
                    dropped += 1
                else:
                    kept_tp.append(s)
            if not kept_tp and not fps:
                notes.append(f"{rid}: no case evaluated ({'; '.join(skipped) or 'none written'})")
                continue
            if dropped or skipped:
                notes.append(f"{rid}: {dropped} true positives not re-drawable; {'; '.join(skipped)}")
            total_tp += len(kept_tp)
            total_fp += len(fps)
            print("[[case]]")
            print(f"rule = {toml_str(rid)}")
            print("positive = [")
            for s in dict.fromkeys(kept_tp):
                print(f"  {toml_str(s)},")
            print("]")
            print("negative = [")
            for s in dict.fromkeys(fps):
                print(f"  {toml_str(s)},")
            print("]")
            print()
    print(f"# {total_tp} true positives, {total_fp} false positives.")
    for n in notes:
        print(f"# not ported: {n}")


if __name__ == "__main__":
    main()
