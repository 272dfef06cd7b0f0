/* Liquid-biopsy CDS playground: builds a real CDS Hooks order-sign request, sends it to this server and shows the
 * cards and the coverage verdict the way an EHR would. Plain browser JavaScript, no build step, no dependencies.
 * All data from the server reaches the page through textContent or through renderMarkdown (which escapes first). */
(function () {
  "use strict";

  var COVERAGE_INFO = "http://hl7.org/fhir/us/davinci-crd/StructureDefinition/ext-coverage-information";
  var COVERAGE_CLASS = "http://terminology.hl7.org/CodeSystem/coverage-class";
  var PATIENT_ID = "playground-patient";
  var ORDER_ID = "playground-order";
  var COVERAGE_ID = "playground-coverage";
  var METASTASES_CODE = "C78.0";
  // ICD-10-CM categories that are complete codes by themselves (no fourth character).
  var COMPLETE_CATEGORIES = { C19: true, C20: true, C61: true };
  var INDICATOR_LABELS = { info: "Info", warning: "Warning", critical: "Critical" };

  var options = null;
  var seq = 0;

  // ------------------------------------------------------------------ safe markdown

  function escapeHtml(text) {
    return String(text)
      .replace(/&/g, "&amp;")
      .replace(/</g, "&lt;")
      .replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;")
      .replace(/'/g, "&#39;");
  }

  // Emphasis on already-escaped text: **bold**, *italic*, _italic_.
  function emphasis(escaped) {
    return escaped
      .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
      .replace(/\*(?=\S)([^*]*?\S)\*/g, "<em>$1</em>")
      .replace(/(^|[^A-Za-z0-9_])_(?=\S)([^_]*?\S)_(?![A-Za-z0-9_])/g, "$1<em>$2</em>");
  }

  // Inline markdown on already-escaped text. Links are cut out first so their urls never see the emphasis rules;
  // only http(s) urls become links, anything else stays as its text.
  function inline(escaped) {
    var linkRe = /\[([^\]\n]+)\]\(([^()\s]+)\)/g;
    var out = "";
    var last = 0;
    var match;
    while ((match = linkRe.exec(escaped)) !== null) {
      out += emphasis(escaped.slice(last, match.index));
      var label = emphasis(match[1]);
      var url = match[2];
      if (/^https?:\/\//i.test(url)) {
        out += '<a href="' + url + '" target="_blank" rel="noopener noreferrer">' + label +
          '<span class="visually-hidden"> (opens in a new tab)</span></a>';
      } else {
        out += label;
      }
      last = match.index + match[0].length;
    }
    return out + emphasis(escaped.slice(last));
  }

  // A deliberately tiny markdown subset: paragraphs split by blank lines, "- " bullet lists, **bold**, *italic*,
  // _italic_ and [text](http/https url). The input is HTML-escaped before any markup is added.
  function renderMarkdown(markdown) {
    var escaped = escapeHtml(markdown == null ? "" : markdown).replace(/\r\n?/g, "\n");
    var html = [];
    escaped.split(/\n[ \t]*\n/).forEach(function (block) {
      var lines = block.split("\n").filter(function (line) { return line.trim() !== ""; });
      var para = [];
      var items = [];
      function flushPara() {
        if (para.length) { html.push("<p>" + inline(para.join(" ")) + "</p>"); }
        para = [];
      }
      function flushList() {
        if (items.length) {
          html.push("<ul>" + items.map(function (item) { return "<li>" + inline(item) + "</li>"; }).join("") +
            "</ul>");
        }
        items = [];
      }
      lines.forEach(function (line) {
        var bullet = /^\s*- +(.*)$/.exec(line);
        if (bullet) {
          flushPara();
          items.push(bullet[1]);
        } else if (items.length && /^\s{2,}\S/.test(line)) {
          items[items.length - 1] += " " + line.trim();
        } else {
          flushList();
          para.push(line.trim());
        }
      });
      flushPara();
      flushList();
    });
    return html.join("");
  }

  // ------------------------------------------------------------------ small DOM helpers

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      var value = attrs[key];
      if (value === null || value === undefined || value === false) { return; }
      if (key === "text") { node.textContent = value; } else if (key === "className") { node.className = value; } else {
        node.setAttribute(key, value === true ? "" : String(value));
      }
    });
    (children || []).forEach(function (child) {
      if (child === null || child === undefined) { return; }
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function clear(node) {
    while (node.firstChild) { node.removeChild(node.firstChild); }
  }

  function isHttpUrl(url) {
    return typeof url === "string" && /^https?:\/\//i.test(url);
  }

  function externalLink(label, url) {
    if (!isHttpUrl(url)) { return el("span", { text: label }); }
    return el("a", { href: url, target: "_blank", rel: "noopener noreferrer" }, [
      label, el("span", { className: "visually-hidden", text: " (opens in a new tab)" })
    ]);
  }

  function uuid4() {
    var c = window.crypto;
    if (c && typeof c.randomUUID === "function") { return c.randomUUID(); }
    var bytes = new Uint8Array(16);
    if (c && typeof c.getRandomValues === "function") {
      c.getRandomValues(bytes);
    } else {
      for (var i = 0; i < 16; i++) { bytes[i] = Math.floor(Math.random() * 256); }
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    var hex = Array.prototype.map.call(bytes, function (b) { return (b + 0x100).toString(16).slice(1); }).join("");
    return hex.slice(0, 8) + "-" + hex.slice(8, 12) + "-" + hex.slice(12, 16) + "-" + hex.slice(16, 20) + "-" +
      hex.slice(20);
  }

  // ------------------------------------------------------------------ options

  function diagnosisCode(category) {
    return COMPLETE_CATEGORIES[category] ? category : category + ".9";
  }

  function payerName() {
    var commercial = (options.plans || []).filter(function (p) { return p.id === "commercial"; })[0];
    var label = commercial ? commercial.label : "";
    return label.replace(/\s+commercial plan$/i, "") || label || "Payer";
  }

  function fillOptions(data) {
    options = data;
    var test = $("test");
    clear(test);
    var listed = el("optgroup", { label: "Listed in " + data.policy });
    var other = el("optgroup", { label: "Other liquid-biopsy codes" });
    (data.tests || []).forEach(function (t) {
      var text = t.code + (t.display ? " — " + t.display : " — not on the " + data.policy + " list");
      (t.listedCode ? listed : other).appendChild(el("option", { value: t.code, text: text }));
    });
    if (listed.children.length) { test.appendChild(listed); }
    if (other.children.length) { test.appendChild(other); }
    var preferred = (data.tests || []).filter(function (t) { return t.code === "0530U"; })[0];
    if (preferred) { test.value = preferred.code; }

    var diagnosis = $("diagnosis");
    clear(diagnosis);
    diagnosis.appendChild(el("option", { value: "", text: "None" }));
    (data.diagnoses || []).forEach(function (d) {
      var code = diagnosisCode(d.code);
      diagnosis.appendChild(el("option", { value: d.code, text: code + " — " + d.display }));
    });

    var purpose = $("purpose");
    clear(purpose);
    purpose.appendChild(el("option", { value: "", text: "None" }));
    (data.purposes || []).forEach(function (p) {
      purpose.appendChild(el("option", { value: p.code, text: p.display }));
    });

    var plan = $("plan");
    clear(plan);
    (data.plans || []).forEach(function (p) {
      plan.appendChild(el("option", { value: p.id, text: p.label + (p.planName ? " — " + p.planName : "") }));
    });
    plan.value = "commercial";

    Array.prototype.forEach.call(document.querySelectorAll("[data-retirement]"), function (node) {
      node.textContent = data.retirement;
    });
    Array.prototype.forEach.call(document.querySelectorAll("[data-policy]"), function (node) {
      node.textContent = data.policy;
    });
    var dateHint = $("date-hint");
    dateHint.textContent = data.policy + " was retired on " + data.retirement + " (last day in force " +
      data.lastDayInForce + "): dates of service on or after " + data.retirement +
      " show the retirement notice instead of the policy's verdict.";
    updateServicePath();

    [test, diagnosis, purpose, plan, $("hook"), $("evaluate")].forEach(function (node) { node.disabled = false; });
    updateTestHint();
    $("options-status").textContent = "";
    $("options-status").hidden = true;
    $("playground-form").setAttribute("data-ready", "true");
  }

  function evaluatePath() {
    return "/playground/evaluate/" + encodeURIComponent(options.services[$("hook").value]);
  }

  function updateServicePath() {
    $("service-path").textContent = evaluatePath();
  }

  function updateTestHint() {
    var code = $("test").value;
    var t = (options.tests || []).filter(function (x) { return x.code === code; })[0];
    var hint = $("test-hint");
    if (!t) { hint.textContent = ""; return; }
    hint.textContent = t.listedCode
      ? (t.display ? t.display + ". " : "") + "On the " + options.policy + " list of investigational codes. " +
        (t.history || "")
      : "A liquid-biopsy code that is not on the " + options.policy + " list.";
  }

  function loadOptions() {
    fetch("/playground/options", { headers: { Accept: "application/json" } })
      .then(function (resp) {
        if (!resp.ok) { throw new Error("the server answered " + resp.status); }
        return resp.json();
      })
      .then(fillOptions)
      .catch(function (err) {
        var status = $("options-status");
        status.setAttribute("role", "alert");
        status.className = "status error";
        status.textContent = "Could not load the playground options: " + err.message + ". Reload to try again.";
      });
  }

  // ------------------------------------------------------------------ the request

  function buildRequest() {
    var code = $("test").value;
    var test = (options.tests || []).filter(function (t) { return t.code === code; })[0] || { code: code };
    var coding = { system: options.codeSystem, code: code };
    if (test.display) { coding.display = test.display; }
    var order = {
      resourceType: "ServiceRequest",
      id: ORDER_ID,
      status: "draft",
      intent: "order",
      subject: { reference: "Patient/" + PATIENT_ID },
      code: { coding: [coding] },
      occurrenceDateTime: $("date").value
    };
    var reasons = [];
    var category = $("diagnosis").value;
    var icdSystem = "http://hl7.org/fhir/sid/icd-10-cm";
    (options.diagnoses || []).forEach(function (d) {
      icdSystem = d.system || icdSystem;
      if (d.code === category) { reasons.push({ coding: [{ system: d.system, code: diagnosisCode(d.code) }] }); }
    });
    if ($("metastases").checked) { reasons.push({ coding: [{ system: icdSystem, code: METASTASES_CODE }] }); }
    var purpose = (options.purposes || []).filter(function (p) { return p.code === $("purpose").value; })[0];
    if (purpose) {
      reasons.push({ coding: [{ system: options.purposeSystem, code: purpose.code, display: purpose.display }] });
    }
    if (reasons.length) { order.reasonCode = reasons; }

    var planId = $("plan").value;
    var plan = (options.plans || []).filter(function (p) { return p.id === planId; })[0];
    var coverage = { resourceType: "Bundle", type: "searchset", entry: [] };
    if (plan && plan.id !== "none") {
      coverage.entry.push({
        resource: {
          resourceType: "Coverage",
          id: COVERAGE_ID,
          status: "active",
          beneficiary: { reference: "Patient/" + PATIENT_ID },
          payor: [{ display: payerName() }],
          "class": [{
            type: { coding: [{ system: COVERAGE_CLASS, code: "plan" }] },
            value: plan.planName,
            name: plan.planName
          }]
        }
      });
    }
    var hook = $("hook").value;
    var context = {
      userId: "Practitioner/playground",
      patientId: PATIENT_ID,
      draftOrders: { resourceType: "Bundle", type: "collection", entry: [{ resource: order }] }
    };
    if (hook === "order-select") { context.selections = ["ServiceRequest/" + ORDER_ID]; }
    return {
      hook: hook,
      hookInstance: uuid4(),
      context: context,
      prefetch: {
        patient: { resourceType: "Patient", id: PATIENT_ID },
        coverage: coverage
      }
    };
  }

  // ------------------------------------------------------------------ rendering the response

  function renderCard(card, index) {
    var indicator = INDICATOR_LABELS[card.indicator] ? card.indicator : "info";
    var summaryId = "card-" + index + "-summary";
    var article = el("article", { className: "card", "data-indicator": indicator, "aria-labelledby": summaryId });

    var source = card.source || {};
    var head = el("div", { className: "card-head" }, [
      el("span", { className: "badge", text: INDICATOR_LABELS[indicator] })
    ]);
    if (source.label) {
      head.appendChild(el("span", { className: "card-source" }, ["Source: ", externalLink(source.label, source.url)]));
    }
    article.appendChild(head);
    article.appendChild(el("h4", { className: "card-summary", id: summaryId, text: card.summary || "" }));

    if (card.detail) {
      var detail = el("div", { className: "card-detail" });
      detail.innerHTML = renderMarkdown(card.detail); // escaped inside renderMarkdown
      article.appendChild(detail);
    }

    if (card.links && card.links.length) {
      var linkList = el("ul");
      card.links.forEach(function (link) {
        var item = el("li", {}, [externalLink(link.label || link.url, link.url)]);
        if (link.type === "smart") { item.appendChild(el("span", { className: "tag", text: "SMART app" })); }
        linkList.appendChild(item);
      });
      article.appendChild(el("div", { className: "card-links card-section" }, [
        el("h5", { text: "Links" }), linkList
      ]));
    }

    if (card.suggestions && card.suggestions.length) {
      var suggestionList = el("ul", { className: "suggestions" });
      card.suggestions.forEach(function (s) {
        var item = el("li", { className: "suggestion" }, [el("span", { className: "suggestion-label", text: s.label })]);
        if (s.isRecommended) { item.appendChild(el("span", { className: "tag", text: "Recommended" })); }
        var actions = (s.actions || []).map(function (a) {
          var target = a.resourceId ? [].concat(a.resourceId).join(", ") :
            (a.resource && a.resource.resourceType ? a.resource.resourceType + (a.resource.id ? "/" + a.resource.id : "") : "");
          return el("li", {}, [
            el("span", { className: "action-type", text: a.type || "action" }),
            " " + (a.description || "") + (target ? " (" + target + ")" : "")
          ]);
        });
        if (actions.length) { item.appendChild(el("ul", { className: "actions" }, actions)); }
        suggestionList.appendChild(item);
      });
      var suggestionSection = el("div", { className: "card-suggestions card-section" }, [
        el("h5", { text: "Suggestions" })
      ]);
      if (card.selectionBehavior) {
        suggestionSection.appendChild(el("p", { className: "hint",
          text: "Selection: " + (card.selectionBehavior === "at-most-one" ? "at most one" : card.selectionBehavior) }));
      }
      suggestionSection.appendChild(suggestionList);
      article.appendChild(suggestionSection);
    }

    if (card.overrideReasons && card.overrideReasons.length) {
      article.appendChild(el("div", { className: "card-overrides card-section" }, [
        el("h5", { text: "Override reasons" }),
        el("ul", {}, card.overrideReasons.map(function (r) {
          return el("li", { text: r.display || r.code || "" });
        }))
      ]));
    }
    return article;
  }

  function subExtension(ext, url) {
    return (ext.extension || []).filter(function (e) { return e.url === url; })[0];
  }

  function coverageInformation(response) {
    var actions = response.systemActions ||
      (response.extension && response.extension.systemActions) || [];
    var found = [];
    actions.forEach(function (action) {
      var res = action.resource;
      if (action.type !== "update" || !res || res.resourceType !== "ServiceRequest") { return; }
      (res.extension || []).filter(function (e) { return e.url === COVERAGE_INFO; }).forEach(function (ext) {
        var covered = subExtension(ext, "covered");
        var pa = subExtension(ext, "pa-needed");
        var reason = subExtension(ext, "reason");
        var assertion = subExtension(ext, "coverage-assertion-id");
        var cov = subExtension(ext, "coverage");
        var billing = subExtension(ext, "billingCode");
        var code = (billing && billing.valueCoding && billing.valueCoding.code) ||
          (res.code && res.code.coding && res.code.coding[0] && res.code.coding[0].code) || "";
        found.push({
          order: "ServiceRequest/" + (res.id || "?") + (code ? " (" + code + ")" : ""),
          covered: covered ? covered.valueCode : "",
          paNeeded: pa ? pa.valueCode : "",
          reason: reason && reason.valueCodeableConcept ?
            (reason.valueCodeableConcept.text ||
              ((reason.valueCodeableConcept.coding || [])[0] || {}).display || "") : "",
          assertionId: assertion ? assertion.valueString : "",
          coverage: cov && cov.valueReference ? cov.valueReference.reference || "" : ""
        });
      });
    });
    return found;
  }

  function renderVerdict(response) {
    var verdict = $("verdict");
    clear(verdict);
    var infos = coverageInformation(response);
    if (!infos.length) {
      verdict.appendChild(el("p", { className: "empty",
        text: "No coverage assertion: the response has no coverage information (systemActions) for this order." }));
      return;
    }
    infos.forEach(function (info) {
      var rows = [
        ["Order", info.order],
        ["Covered", info.covered],
        ["Prior authorization needed", info.paNeeded || "not stated"],
        ["Reason", info.reason],
        ["Coverage", info.coverage],
        ["Coverage assertion id", info.assertionId]
      ];
      var dl = el("dl");
      rows.forEach(function (row) {
        var dd = el("dd", { text: row[1] || "—" });
        if (row[0] === "Covered") { dd.className = "verdict-value"; dd.setAttribute("data-covered", row[1]); }
        if (row[0] === "Coverage assertion id") { dd.className = "mono"; }
        dl.appendChild(el("dt", { text: row[0] }));
        dl.appendChild(dd);
      });
      verdict.appendChild(el("div", { className: "verdict-item", "data-covered": info.covered }, [dl]));
    });
  }

  function renderCards(response) {
    var cards = $("cards");
    clear(cards);
    var list = response.cards || [];
    if (!list.length) {
      cards.appendChild(el("p", { className: "empty", text: "The service returned no cards for this order." }));
      return;
    }
    list.forEach(function (card, i) { cards.appendChild(renderCard(card, i)); });
  }

  function setStatus(node) {
    var status = $("result-status");
    clear(status);
    status.appendChild(node);
  }

  function showError(message) {
    setStatus(el("div", { className: "status error", role: "alert" }, [
      el("strong", { text: "The request failed. " }), message
    ]));
    clear($("cards"));
    $("cards").appendChild(el("p", { className: "empty", text: "No cards." }));
    clear($("verdict"));
    $("verdict").appendChild(el("p", { className: "empty", text: "No verdict." }));
  }

  function pretty(value) {
    return JSON.stringify(value, null, 2);
  }

  function finish(state) {
    seq += 1;
    var result = $("result");
    result.setAttribute("aria-busy", "false");
    result.setAttribute("data-state", state);
    result.setAttribute("data-seq", String(seq));
    $("evaluate").disabled = false;
  }

  function evaluate(event) {
    event.preventDefault();
    if (!options) { return; }
    var form = $("playground-form");
    if (!$("date").value) {
      showError("Enter a date of service.");
      finish("error");
      $("date").focus();
      return;
    }
    var body = buildRequest();
    var path = evaluatePath();
    $("raw-request").textContent = pretty(body);
    $("raw-request-meta").textContent = "POST " + path;
    $("raw-response").textContent = "";
    $("raw-response-meta").textContent = "waiting…";
    var result = $("result");
    result.setAttribute("aria-busy", "true");
    result.setAttribute("data-state", "loading");
    $("evaluate").disabled = true;
    setStatus(el("p", { className: "status", text: "Sending the " + body.hook + " request…" }));
    var started = performance.now();

    fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body)
    }).then(function (resp) {
      return resp.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        return { resp: resp, text: text, data: data };
      });
    }).then(function (r) {
      var ms = Math.round(performance.now() - started);
      $("raw-response").textContent = r.data !== null ? pretty(r.data) : r.text;
      $("raw-response-meta").textContent = "HTTP " + r.resp.status + " · " + ms + " ms";
      if (r.resp.status === 401) {
        showError("The server requires JWT authentication (HTTP 401). The playground only works when the service " +
          "runs without trusted issuers, as in local development.");
        finish("error");
        return;
      }
      if (!r.resp.ok || !r.data || !Array.isArray(r.data.cards)) {
        var diagnostics = r.data && r.data.resourceType === "OperationOutcome" && r.data.issue && r.data.issue[0] ?
          (r.data.issue[0].diagnostics || r.data.issue[0].code || "") : "";
        showError("HTTP " + r.resp.status + (diagnostics ? ": " + diagnostics :
          (r.resp.ok ? ": the response is not a CDS Hooks response." : "")));
        finish("error");
        return;
      }
      var n = r.data.cards.length;
      var infos = coverageInformation(r.data);
      setStatus(el("p", { className: "status ok", text: n + (n === 1 ? " card" : " cards") + "; " +
        (infos.length ? "verdict: " + infos.map(function (i) { return i.covered; }).join(", ")
          : "no coverage assertion") + ". (HTTP " + r.resp.status + ", " + ms + " ms)" }));
      renderCards(r.data);
      renderVerdict(r.data);
      finish("done");
    }).catch(function (err) {
      $("raw-response-meta").textContent = "no response";
      showError("Could not reach the service: " + (err && err.message ? err.message : String(err)) + ".");
      finish("error");
    });
    form.setAttribute("data-last-hook-instance", body.hookInstance);
  }

  // ------------------------------------------------------------------ copy buttons

  function fallbackCopy(text) {
    var area = el("textarea", { readonly: true, "aria-hidden": "true" });
    area.value = text;
    area.style.position = "fixed";
    area.style.top = "-1000px";
    document.body.appendChild(area);
    area.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    document.body.removeChild(area);
    return ok ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  }

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).catch(function () { return fallbackCopy(text); });
    }
    return fallbackCopy(text);
  }

  function onCopy(event) {
    var button = event.currentTarget;
    var target = $(button.getAttribute("data-copy"));
    var what = button.getAttribute("data-copy") === "raw-request" ? "request" : "response";
    var status = $("copy-status");
    var text = target.textContent;
    if (!text) { status.textContent = "Nothing to copy yet: send a request first."; return; }
    copyText(text).then(function () {
      status.textContent = "Copied the " + what + " to the clipboard.";
    }, function () {
      status.textContent = "Could not copy automatically; select the text and copy it by hand.";
    });
  }

  // ------------------------------------------------------------------ start

  window.playground = { renderMarkdown: renderMarkdown, escapeHtml: escapeHtml };

  function start() {
    $("playground-form").addEventListener("submit", evaluate);
    $("test").addEventListener("change", updateTestHint);
    $("hook").addEventListener("change", updateServicePath);
    Array.prototype.forEach.call(document.querySelectorAll("button.copy"), function (b) {
      b.addEventListener("click", onCopy);
    });
    loadOptions();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
