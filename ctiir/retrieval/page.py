"""The one HTML page of ``ctiir serve`` (kept in Python so the wheel needs no package-data entry).

The page posts the form to ``POST /search`` as multipart and draws the results as a grid of figures.
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ctiir search</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
 form { display: flex; gap: .75rem; align-items: end; flex-wrap: wrap; margin-bottom: 1rem; }
 label { display: flex; flex-direction: column; font-size: .85rem; gap: .2rem; }
 input[type=text] { width: 22rem; }
 #reference img { max-width: 160px; max-height: 160px; border: 2px solid #2a5ac8; }
 #status { margin: .5rem 0; }
 #status.error { color: #c81e1e; }
 #results { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: .75rem; }
 figure { margin: 0; border: 1px solid #ccc; padding: 4px; }
 figure img { width: 100%; aspect-ratio: 1; object-fit: contain; background: #f2f2f2; }
 figcaption { font-size: .8rem; word-break: break-all; }
 .score { font-weight: 600; }
</style>
</head>
<body>
<h1>ctiir search</h1>
<p>__GALLERY__</p>
<form id="search">
 <label>reference image <input type="file" name="image" accept="image/*"></label>
 <label>change (text) <input type="text" name="text" placeholder="is red with long sleeves"></label>
 <label>k <input type="number" name="k" value="10" min="1" max="__MAX_K__"></label>
 <button type="submit">Search</button>
</form>
<div id="reference"></div>
<div id="status"></div>
<div id="results"></div>
<script>
const form = document.getElementById("search");
const statusBox = document.getElementById("status");
const results = document.getElementById("results");
const reference = document.getElementById("reference");
form.image.addEventListener("change", () => {
  reference.replaceChildren();
  const file = form.image.files[0];
  if (file) { const img = document.createElement("img"); img.src = URL.createObjectURL(file); reference.append(img); }
});
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = new FormData();
  if (form.image.files[0]) body.append("image", form.image.files[0]);
  body.append("text", form.text.value);
  body.append("k", form.k.value);
  statusBox.className = ""; statusBox.textContent = "searching...";
  results.replaceChildren();
  let reply;
  try {
    const response = await fetch("/search", { method: "POST", body });
    reply = await response.json();
    if (!response.ok) throw new Error(reply.detail || response.statusText);
  } catch (err) {
    statusBox.className = "error"; statusBox.textContent = "error: " + err.message; return;
  }
  const w = reply.weights;
  statusBox.textContent = reply.results.length + " results" + (w ? ` (w_img ${w.image.toFixed(2)}, w_txt ${w.text.toFixed(2)})` : "");
  for (const item of reply.results) {
    const figure = document.createElement("figure");
    figure.className = "result";
    const img = document.createElement("img");
    img.src = item.image_url; img.alt = item.id;
    const caption = document.createElement("figcaption");
    const score = document.createElement("span");
    score.className = "score"; score.textContent = `#${item.rank} ${item.score.toFixed(3)}`;
    caption.append(score, document.createElement("br"), item.id);
    figure.append(img, caption);
    results.append(figure);
  }
});
</script>
</body>
</html>
"""
