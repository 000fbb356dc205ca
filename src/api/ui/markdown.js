// Markdown for answers, as DOM nodes (never HTML strings, so an answer can't inject markup):
// fenced code blocks, headings, bullet and numbered lists, paragraphs, and inline code, bold,
// italics and http(s) links. Anything else stays as the text it is.

/** Inline spans of one line or paragraph. */
function inline(text) {
  const out = document.createDocumentFragment();
  const pattern = /(`[^`]+`)|(\*\*[^*]+\*\*)|(\*[^*\s][^*]*\*)|(\[[^\]]+\]\(https?:\/\/[^\s)]+\))/g;
  let last = 0;
  for (const m of text.matchAll(pattern)) {
    if (m.index > last) out.append(text.slice(last, m.index));
    const t = m[0];
    if (m[1]) {
      const c = document.createElement("code");
      c.textContent = t.slice(1, -1);
      out.append(c);
    } else if (m[2]) {
      const b = document.createElement("strong");
      b.append(inline(t.slice(2, -2)));
      out.append(b);
    } else if (m[3]) {
      const i = document.createElement("em");
      i.append(inline(t.slice(1, -1)));
      out.append(i);
    } else {
      const close = t.indexOf("](");
      const a = document.createElement("a");
      a.textContent = t.slice(1, close);
      a.href = t.slice(close + 2, -1);
      a.rel = "noopener noreferrer";
      a.target = "_blank";
      out.append(a);
    }
    last = m.index + t.length;
  }
  if (last < text.length) out.append(text.slice(last));
  return out;
}

/** The whole answer; an unclosed fence (still streaming) shows as code so far. */
export function render(text) {
  const root = document.createDocumentFragment();
  const lines = text.split("\n");
  let para = [];
  let list = null;
  const flush = () => {
    if (para.length) {
      const p = document.createElement("p");
      para.forEach((l, i) => {
        if (i) p.append(document.createElement("br"));
        p.append(inline(l));
      });
      root.append(p);
      para = [];
    }
    list = null;
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = line.match(/^\s*```\s*([\w+-]*)/);
    if (fence) {
      flush();
      const body = [];
      i++;
      while (i < lines.length && !/^\s*```\s*$/.test(lines[i])) body.push(lines[i++]);
      const pre = document.createElement("pre");
      const code = document.createElement("code");
      if (fence[1]) code.dataset.lang = fence[1];
      code.textContent = body.join("\n");
      pre.append(code);
      root.append(pre);
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    const bullet = line.match(/^\s*[-*+]\s+(.*)$/);
    const numbered = line.match(/^\s*\d+[.)]\s+(.*)$/);
    if (heading) {
      flush();
      const h = document.createElement(`h${Math.min(6, heading[1].length + 2)}`);
      h.append(inline(heading[2]));
      root.append(h);
    } else if (bullet || numbered) {
      const tag = bullet ? "ul" : "ol";
      if (para.length) flush();
      if (!list || list.tagName.toLowerCase() !== tag) {
        list = document.createElement(tag);
        root.append(list);
      }
      const li = document.createElement("li");
      li.append(inline((bullet || numbered)[1]));
      list.append(li);
    } else if (!line.trim()) {
      flush();
    } else {
      list = null;
      para.push(line);
    }
  }
  flush();
  return root;
}
