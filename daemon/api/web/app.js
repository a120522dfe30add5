// The reading web app: library, book page, chapter reader, notes. It talks to the daemon's
// local API on this origin only (the session cookie authenticates it), so it keeps working
// with the content service gone or the radio off: everything it shows is on the device.
"use strict";

const view = document.getElementById("view");
const where = document.getElementById("where");
const message = document.getElementById("message");

async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const answer = await fetch(path, init);
  const doc = await answer.json();
  if (!answer.ok) throw new Error(doc.detail || doc.error);
  return doc;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "onclick") node.addEventListener("click", value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function say(text) { message.textContent = text; }

const enc = encodeURIComponent;
const resourceUrl = (bookId, path) =>
  `/v1/books/${enc(bookId)}/resources/${path.split("/").map(enc).join("/")}`;

// What the reader is told about where a book is: honestly, from the library entry.
function stateOf(book) {
  if (book.state === "complete") return el("span", { class: "state on-device" }, "On device");
  if (["downloading", "queued", "retrying"].includes(book.state)) {
    const part = book.frames_total ? book.frames_held / book.frames_total : 0;
    const label = book.state === "retrying" ? "Waiting to retry" : "Downloading";
    return el("span", { class: "state downloading" },
      `${label} ${Math.round(part * 100)}%`, el("progress", { max: "1", value: String(part) }));
  }
  return el("span", { class: "state cloud" }, "In the cloud");
}

// -- the library ---------------------------------------------------------------------------

async function showLibrary() {
  where.textContent = "Library";
  const list = el("ul", { class: "books" });
  const more = el("button", { id: "more" }, "More books");
  view.replaceChildren(el("h1", {}, "Library"), list);
  let cursor = null;
  async function page() {
    const query = cursor ? `?limit=30&cursor=${enc(cursor)}` : "?limit=30";
    const doc = await api("GET", "/v1/library" + query);
    for (const book of doc.books) list.append(bookCard(book));
    cursor = doc.next_cursor;
    if (cursor) view.append(more); else more.remove();
  }
  more.addEventListener("click", page);
  await page();
}

function bookCard(book) {
  const cover = el("img", { class: "cover", alt: "" });
  if (book.readable) {
    api("GET", `/v1/books/${enc(book.book_id)}`).then((details) => {
      const image = coverOf(details);
      if (image) cover.src = resourceUrl(book.book_id, image.path);
    }).catch(() => {});
  }
  return el("li", { "data-book": book.book_id },
    el("a", { href: `#/book/${enc(book.book_id)}` }, cover,
      el("span", { class: "title" }, book.title || "A book in your cloud library")),
    el("span", {}, (book.authors || []).join(", ")), stateOf(book));
}

function coverOf(details) {
  const images = details.resources.filter((r) => r.media_type.startsWith("image/") && r.available);
  return images.find((r) => /cover/i.test(r.path)) || null;
}

// -- a book ----------------------------------------------------------------------------------

// Chapters in reading order: the distinct resources the table of contents points at.
function chaptersOf(details) {
  const paths = [];
  const walk = (entries) => {
    for (const entry of entries) {
      const path = entry.href.split("#")[0];
      if (path && !paths.includes(path)) paths.push(path);
      walk(entry.children || []);
    }
  };
  walk(details.toc);
  if (!paths.length) {
    for (const r of details.resources) {
      if (r.media_type === "application/xhtml+xml") paths.push(r.path);
    }
  }
  return paths;
}

async function showBook(bookId) {
  const entry = await api("GET", `/v1/library/${enc(bookId)}`);
  where.textContent = entry.title || bookId;
  // A book never delivered has no manifest here, so no title yet: say so rather than guess.
  const parts = [el("h1", {}, entry.title || "A book in your cloud library"), el("p", {}, (entry.authors || []).join(", ")),
    stateOf(entry)];
  if (!entry.readable) {
    if (["in_cloud", "evicted"].includes(entry.state)) {
      parts.push(el("p", {}, "This book is not on the device yet. ",
        el("button", { id: "download", onclick: async () => {
          await api("POST", `/v1/books/${enc(bookId)}/download`);
          say("It will be brought onto the device when the radio is on.");
        } }, "Bring it onto the device")));
    } else {
      parts.push(el("p", {}, "Its first chapter is not on the device yet."));
    }
    view.replaceChildren(...parts);
    return;
  }
  const details = await api("GET", `/v1/books/${enc(bookId)}`);
  const chapters = chaptersOf(details);
  const toc = el("ol", { class: "toc" });
  const addEntries = (list, entries) => {
    for (const t of entries) {
      const index = chapters.indexOf(t.href.split("#")[0]);
      const item = el("li", {}, index < 0 ? t.label
        : el("a", { href: `#/read/${enc(bookId)}/${index}` }, t.label));
      if (t.children && t.children.length) item.append(addEntries(el("ol"), t.children));
      list.append(item);
    }
    return list;
  };
  addEntries(toc, details.toc);
  const popular = await api("GET", `/v1/books/${enc(bookId)}/popular-highlights`);
  const passages = el("ul", { class: "popular" });
  for (const p of popular.passages) {
    passages.append(el("li", {}, `“${p.anchor.quote ? p.anchor.quote.exact : ""}” — ${p.readers} readers`));
  }
  parts.push(el("p", {}, el("a", { href: `#/read/${enc(bookId)}/0`, id: "start" }, "Start reading")),
    el("h2", {}, "Contents"), toc, el("h2", {}, "Popular highlights"),
    popular.passages.length ? passages : el("p", {}, "None held on the device."),
    el("h2", {}, "Your notes"), await notesList(bookId));
  view.replaceChildren(...parts);
}

async function notesList(bookId) {
  const doc = await api("GET", `/v1/books/${enc(bookId)}/annotations`);
  const list = el("ul", { class: "notes", id: "notes" });
  for (const a of doc.annotations) {
    const quote = a.anchor && a.anchor.quote ? `“${a.anchor.quote.exact}”` : a.kind;
    list.append(el("li", { "data-id": a.id }, quote, a.note ? ` — ${a.note}` : "",
      a.pending ? el("span", { class: "pending" }, " (not synced yet)") : ""));
  }
  if (!doc.annotations.length) list.append(el("li", {}, "No notes yet."));
  return list;
}

// -- the chapter reader ----------------------------------------------------------------------

async function showChapter(bookId, index) {
  const details = await api("GET", `/v1/books/${enc(bookId)}`);
  const chapters = chaptersOf(details);
  const path = chapters[index];
  where.textContent = `${details.title} — ${index + 1} of ${chapters.length}`;
  const available = details.resources.find((r) => r.path === path);
  const frame = el("iframe", { class: "book", sandbox: "allow-same-origin", title: "chapter" });
  const noteText = el("input", { id: "note-text", placeholder: "a note (optional)" });
  const bar = el("nav", { class: "reader" },
    el("a", { href: `#/book/${enc(bookId)}` }, "Contents"),
    index > 0 ? el("a", { id: "prev", href: `#/read/${enc(bookId)}/${index - 1}` }, "← Previous") : "",
    index + 1 < chapters.length
      ? el("a", { id: "next", href: `#/read/${enc(bookId)}/${index + 1}` }, "Next →") : "",
    el("button", { id: "highlight", onclick: () => annotate(bookId, path, frame, "") }, "Highlight"),
    noteText,
    el("button", { id: "note", onclick: () => annotate(bookId, path, frame, noteText.value) },
      "Add note"));
  const notes = el("div", { id: "chapter-notes" });
  view.replaceChildren(bar, frame, notes);
  if (available && !available.available) {
    frame.replaceWith(el("p", {}, "This chapter is still downloading; it will be here soon."));
    return;
  }
  frame.addEventListener("load", async () => {
    await paintNotes(bookId, path, frame, notes);
    const place = await api("GET", `/v1/books/${enc(bookId)}/position`);
    const here = (place.here || place.latest || {}).position;
    if (here && here.resource === path && here.start) scrollToOffset(frame, here.start);
    frame.contentWindow.addEventListener("scroll", debounce(() => savePlace(bookId, path,
      index, chapters.length, frame), 800));
  });
  frame.src = resourceUrl(bookId, path);
  await savePlace(bookId, path, index, chapters.length, null);
}

function debounce(action, ms) {
  let timer = null;
  return () => { clearTimeout(timer); timer = setTimeout(action, ms); };
}

async function savePlace(bookId, path, index, count, frame) {
  const start = frame ? offsetAtTop(frame) : 0;
  try {
    await api("PUT", `/v1/books/${enc(bookId)}/position`,
      { resource: path, start, progress: Math.min(1, index / Math.max(1, count)) });
  } catch (e) { say(`Your place was not saved: ${e.message}`); }
}

// Offsets are Unicode code points into the body's text (docs/ANNOTATIONS.md "Anchors").
const points = (text) => [...text].length;

function textNodes(doc) {
  const walker = doc.createTreeWalker(doc.body, NodeFilter.SHOW_TEXT);
  const nodes = [];
  while (walker.nextNode()) nodes.push(walker.currentNode);
  return nodes;
}

function offsetOf(doc, node, offset) {
  const range = doc.createRange();
  range.setStart(doc.body, 0);
  range.setEnd(node, offset);
  return points(range.toString());
}

function offsetAtTop(frame) {
  const doc = frame.contentDocument;
  const top = frame.contentWindow.scrollY;
  for (const node of textNodes(doc)) {
    const box = node.parentElement.getBoundingClientRect();
    if (box.top + top >= top) return offsetOf(doc, node, 0);
  }
  return 0;
}

function scrollToOffset(frame, start) {
  const doc = frame.contentDocument;
  for (const node of textNodes(doc)) {
    if (offsetOf(doc, node, 0) + points(node.data) > start) {
      node.parentElement.scrollIntoView();
      return;
    }
  }
}

async function annotate(bookId, path, frame, note) {
  const doc = frame.contentDocument;
  const selection = frame.contentWindow.getSelection();
  if (!selection || selection.isCollapsed) { say("Select some text first."); return; }
  const range = selection.getRangeAt(0);
  const start = offsetOf(doc, range.startContainer, range.startOffset);
  const exact = range.toString();
  const all = [...doc.body.textContent];
  const anchor = {
    resource: path, start, end: start + points(exact),
    quote: { exact, prefix: all.slice(Math.max(0, start - 32), start).join(""),
      suffix: all.slice(start + points(exact), start + points(exact) + 32).join("") },
  };
  const body = { kind: note ? "note" : "highlight", anchor, color: "yellow" };
  if (note) body.note = note;
  try {
    await api("POST", `/v1/books/${enc(bookId)}/annotations`, body);
    selection.removeAllRanges();
    say(note ? "Note saved on the device." : "Highlight saved on the device.");
    await paintNotes(bookId, path, frame, document.getElementById("chapter-notes"));
  } catch (e) { say(`Not saved: ${e.message}`); }
}

// Mark this chapter's highlights in the frame (the app's own DOM work: the frame runs no script).
async function paintNotes(bookId, path, frame, panel) {
  const doc = frame.contentDocument;
  for (const mark of doc.querySelectorAll("mark[data-shelfsync]")) mark.replaceWith(...mark.childNodes);
  doc.body.normalize();
  const all = await api("GET", `/v1/books/${enc(bookId)}/annotations`);
  const mine = all.annotations.filter((a) => a.anchor && a.anchor.resource === path);
  for (const a of mine) markRange(doc, a.anchor.start, a.anchor.end);
  panel.replaceChildren(el("h2", {}, "Notes in this chapter"), await notesList(bookId));
}

function markRange(doc, start, end) {
  let at = 0;
  for (const node of textNodes(doc)) {
    const length = points(node.data);
    const lo = Math.max(start, at), hi = Math.min(end, at + length);
    if (lo < hi) {
      const chars = [...node.data];
      const from = chars.slice(0, lo - at).join("").length;
      const to = chars.slice(0, hi - at).join("").length;
      const range = doc.createRange();
      range.setStart(node, from);
      range.setEnd(node, to);
      const mark = doc.createElementNS("http://www.w3.org/1999/xhtml", "mark");
      mark.setAttribute("data-shelfsync", "");
      range.surroundContents(mark);
    }
    at += length;
    if (at >= end) return;
  }
}

// -- routes ----------------------------------------------------------------------------------

async function route() {
  const [, page, bookId, index] = location.hash.split("/").map(decodeURIComponent);
  say("");
  try {
    if (page === "book") await showBook(bookId);
    else if (page === "read") await showChapter(bookId, Number(index));
    else await showLibrary();
  } catch (e) {
    view.replaceChildren(el("p", {}, `Could not show this page: ${e.message}`));
  }
}

window.addEventListener("hashchange", route);
route();
