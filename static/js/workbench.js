/* ragloop curator workbench: judge a turn with the keyboard, autosave the draft (to the server
 * and to localStorage, so a lost connection loses nothing), submit, and move on to the next turn,
 * which was fetched in the background while the curator worked. Plain JS, no build step.
 *
 * User-written text (passages, search results) only ever reaches the page as server-escaped
 * HTML or through textContent; nothing here builds HTML from strings.
 */
(function () {
  "use strict";

  var DRAFT_DELAY_MS = 800;
  var GUIDELINES_KEY = "ragloop:guidelines-open";
  var page = null; // the judging page on screen (replaced when the next turn is swapped in)

  function isTextField(element) {
    if (!element || !element.tagName) return false;
    if (element.isContentEditable || element.tagName === "TEXTAREA" || element.tagName === "SELECT") return true;
    return element.tagName === "INPUT" && ["radio", "checkbox", "button", "submit", "reset"].indexOf(element.type) === -1;
  }

  function storageGet(key) {
    try { return JSON.parse(window.localStorage.getItem(key) || "null"); } catch (error) { return null; }
  }
  function storageSet(key, value) {
    try { window.localStorage.setItem(key, JSON.stringify(value)); } catch (error) { /* full or disabled: the server copy remains */ }
  }
  function storageRemove(key) {
    try { window.localStorage.removeItem(key); } catch (error) { /* ignore */ }
  }

  function createPage(root) {
    var state = JSON.parse(root.querySelector("#workbench-state").textContent);
    var form = root.querySelector("#label-form");
    var self = {
      root: root,
      state: state,
      form: form,
      baseVersion: state.base_version,
      storageKey: "ragloop:draft:" + state.knowledge_base + ":" + state.turn_id + ":" + state.curator_id,
      edits: 0, // bumped on every change; a save only clears `pending` if no change came meanwhile
      savedEdits: 0,
      beaconEdits: -1,
      pending: false,
      saving: false,
      saveTimer: null,
      conflict: false,
      submitting: false,
      submitted: false,
      preload: null,
      searchSeq: 0,
      lastPassage: null,
      // Suggestions the page pre-selects (curation.suggestion_selectors.TurnSuggestions.as_state).
      suggestions: state.suggestions || { passages: {}, answer: null },
      pendingWarned: false,
      tagsOpen: false, // the failure tag picker (t): digits toggle tags while it is open
    };

    function $(selector) { return root.querySelector(selector); }
    function csrfToken() { return form.elements.csrfmiddlewaretoken.value; }
    function passages() { return Array.prototype.slice.call(root.querySelectorAll(".wb-passage")); }

    function setStatus(text) { $("#wb-status").textContent = text; }
    function showAlert(message, withReload) {
      var alert = $("#wb-alert");
      alert.textContent = message;
      if (withReload) {
        var button = document.createElement("button");
        button.type = "button";
        button.textContent = "Reload";
        button.addEventListener("click", function () { window.location.reload(); });
        alert.appendChild(document.createTextNode(" "));
        alert.appendChild(button);
      }
      alert.hidden = false;
    }
    function clearAlert() { var alert = $("#wb-alert"); alert.hidden = true; alert.textContent = ""; }

    // --- the label as a payload (see curation/services/labels.py) -------------------------

    function attachedInfo(article) {
      var link = article.querySelector(".wb-doc");
      return {
        title: link ? link.textContent.replace(/\s*↗\s*$/, "") : "",
        url: link ? link.getAttribute("href") : "",
        text: article.querySelector(".wb-text").textContent,
      };
    }

    function collectPayload() {
      var judged = {};
      var attached = [];
      var info = {};
      passages().forEach(function (article) {
        var checked = article.querySelector("input[type=radio]:checked");
        if (article.dataset.kind === "retrieved") {
          if (checked) judged[article.dataset.passageId] = checked.value;
        } else {
          var chunkId = Number(article.dataset.chunkId);
          attached.push({ chunk_id: chunkId, relevance: checked ? checked.value : "relevant" });
          info[chunkId] = attachedInfo(article);
        }
      });
      var rating = form.querySelector("input[name=answer_rating]:checked");
      // Only a turn whose follow-up was rewritten has the rewrite verdict fields.
      var rewriteWrong = form.elements.rewrite_wrong;
      var correctedQuery = form.elements.corrected_query;
      return {
        payload: {
          passages: judged,
          attached: attached,
          answer_rating: rating ? rating.value : "",
          gold_answer: form.elements.gold_answer.value,
          rationale: form.elements.rationale.value,
          has_personal_data: form.elements.has_personal_data.checked,
          comment: form.elements.comment.value,
          rewrite_wrong: rewriteWrong ? rewriteWrong.checked : false,
          corrected_query: correctedQuery ? correctedQuery.value : "",
          skipped: false,
          skip_reason: "",
          failure_tags: checkedTags(),
          suggestions: suggestionIds(),
        },
        info: info,
      };
    }

    // --- failure tags: t opens the picker, a digit toggles a tag, Esc closes -------------

    function tagBoxes() { return Array.prototype.slice.call(form.querySelectorAll("input[name=failure_tags]")); }
    function checkedTags() { return tagBoxes().filter(function (box) { return box.checked; }).map(function (box) { return box.value; }); }

    function openTags() {
      var picker = $("#wb-tags");
      if (!picker) return;
      self.tagsOpen = true;
      picker.classList.add("wb-tags-open");
      picker.setAttribute("aria-expanded", "true");
      picker.focus({ preventScroll: true });
      picker.scrollIntoView({ block: "nearest" });
      setStatus(tagBoxes().length ? "Failure tags: a digit toggles a tag, Esc closes." : "This knowledge base has no failure tags.");
    }

    function closeTags(keepFocus) {
      var picker = $("#wb-tags");
      self.tagsOpen = false;
      if (!picker) return;
      picker.classList.remove("wb-tags-open");
      picker.setAttribute("aria-expanded", "false");
      if (!keepFocus) focusPassage(self.lastPassage);
    }

    function toggleTag(key) {
      var label = form.querySelector('.wb-tag[data-key="' + key + '"]');
      if (!label) return false;
      var box = label.querySelector("input");
      box.checked = !box.checked;
      edited();
      setStatus((box.checked ? "Tagged: " : "Untagged: ") + label.textContent.replace(/^\s*\S+\s+/, "").trim());
      return true;
    }

    // Keys while the picker is open; true when the key was the picker's.
    function onTagsKey(event) {
      if (event.key === "Escape" || event.key === "t" || event.key === "Enter") { closeTags(); return true; }
      if (/^[0-9]$/.test(event.key)) { toggleTag(event.key); return true; }
      closeTags(); // any other key leaves the picker and does what it does elsewhere
      return false;
    }

    // --- suggestions: pre-selected, accepted with one key (a), changed like any judgment ---

    function suggestionIds() {
      var ids = {};
      Object.keys(self.suggestions.passages).forEach(function (id) { ids[id] = self.suggestions.passages[id].id; });
      return { passages: ids, answer: self.suggestions.answer ? self.suggestions.answer.id : null };
    }

    // [{container, suggestion}] for every item with a suggestion: the passages, then the answer.
    function suggestedItems() {
      var items = [];
      root.querySelectorAll('.wb-passage[data-kind="retrieved"]').forEach(function (article) {
        var suggestion = self.suggestions.passages[article.dataset.passageId];
        if (suggestion) items.push({ container: article, suggestion: suggestion });
      });
      if (self.suggestions.answer && form.querySelector(".wb-rating")) items.push({ container: form.querySelector(".wb-rating").parentNode, suggestion: self.suggestions.answer });
      return items;
    }

    function refreshSuggestions() {
      var pending = 0;
      suggestedItems().forEach(function (item) {
        var checked = item.container.querySelector("input[type=radio]:checked");
        var stateOf = !checked ? "pending" : checked.value === item.suggestion.value ? "accepted" : "changed";
        if (stateOf === "pending") pending += 1;
        item.container.querySelectorAll(".wb-opt").forEach(function (option) {
          var radio = option.querySelector("input[type=radio]");
          option.classList.toggle("wb-suggested", radio.value === item.suggestion.value);
        });
        var box = item.container.querySelector(".wb-suggestion");
        if (box) {
          box.dataset.state = stateOf;
          box.querySelector(".wb-suggestion-state").textContent =
            stateOf === "pending" ? "— a accepts" : stateOf === "accepted" ? "— accepted" : "— you chose otherwise";
        }
      });
      return pending;
    }

    function acceptSuggestions() {
      var accepted = 0;
      suggestedItems().forEach(function (item) {
        if (item.container.querySelector("input[type=radio]:checked")) return; // judged already: the curator's word stands
        checkRadio(item.container, item.suggestion.value);
        accepted += 1;
      });
      if (!accepted) { setStatus("No open suggestion on this turn."); return; }
      edited();
      setStatus("Accepted " + accepted + (accepted === 1 ? " suggestion." : " suggestions."));
    }

    function checkRadio(container, value) {
      if (!container) return; // a turn without an answer has no rating to set
      container.querySelectorAll("input[type=radio]").forEach(function (radio) { radio.checked = radio.value === value; });
    }

    function addAttached(chunkId, relevance, info) {
      var existing = root.querySelector('.wb-passage[data-kind="attached"][data-chunk-id="' + Number(chunkId) + '"]');
      if (existing) return existing;
      var article = $("#wb-attached-template").content.firstElementChild.cloneNode(true);
      article.dataset.chunkId = String(chunkId);
      var link = article.querySelector(".wb-doc");
      link.textContent = (info.title || "chunk " + chunkId) + " ↗";
      if (info.url) link.setAttribute("href", info.url);
      article.querySelector(".wb-text").textContent = info.text || "";
      article.querySelectorAll("input[type=radio]").forEach(function (radio) { radio.name = "attached-" + chunkId; });
      checkRadio(article, relevance || "relevant");
      $("#wb-attached").appendChild(article);
      root.querySelector(".wb-attached-empty").hidden = true;
      return article;
    }

    function removeAttached(article) {
      var list = passages();
      var index = list.indexOf(article);
      article.remove();
      root.querySelector(".wb-attached-empty").hidden = !!root.querySelector('.wb-passage[data-kind="attached"]');
      var rest = passages();
      if (rest.length) focusPassage(rest[Math.min(index, rest.length - 1)]);
      edited();
    }

    function applyPayload(payload, info) {
      var judged = payload.passages || {};
      root.querySelectorAll('.wb-passage[data-kind="retrieved"]').forEach(function (article) {
        checkRadio(article, judged[article.dataset.passageId] || "");
      });
      var wanted = {};
      (payload.attached || []).forEach(function (item) { wanted[item.chunk_id] = item.relevance; });
      root.querySelectorAll('.wb-passage[data-kind="attached"]').forEach(function (article) {
        if (!(article.dataset.chunkId in wanted)) article.remove();
      });
      (payload.attached || []).forEach(function (item) {
        checkRadio(addAttached(item.chunk_id, item.relevance, (info && info[item.chunk_id]) || {}), item.relevance);
      });
      root.querySelector(".wb-attached-empty").hidden = !!root.querySelector('.wb-passage[data-kind="attached"]');
      checkRadio(form.querySelector(".wb-rating"), payload.answer_rating || "");
      form.elements.gold_answer.value = payload.gold_answer || "";
      form.elements.rationale.value = payload.rationale || "";
      form.elements.has_personal_data.checked = !!payload.has_personal_data;
      form.elements.comment.value = payload.comment || "";
      if (form.elements.rewrite_wrong) form.elements.rewrite_wrong.checked = !!payload.rewrite_wrong;
      if (form.elements.corrected_query) form.elements.corrected_query.value = payload.corrected_query || "";
      var tags = payload.failure_tags || [];
      tagBoxes().forEach(function (box) { box.checked = tags.indexOf(box.value) !== -1; });
      refreshSuggestions();
    }

    // --- drafts: localStorage at once, the server after a pause ---------------------------

    function draftBody(payload) {
      var body = new URLSearchParams();
      body.set("payload", JSON.stringify(payload));
      body.set("base_version", String(self.baseVersion));
      body.set("csrfmiddlewaretoken", csrfToken());
      return body;
    }

    function mirrorLocally(collected) {
      // Kept until the server confirms the draft: a reload, a crash or a lost connection
      // in between finds it here and sends it again.
      storageSet(self.storageKey, {
        payload: collected.payload,
        attached_info: collected.info,
        base_version: self.baseVersion,
        pending: true,
        saved_at: new Date().toISOString(),
      });
    }

    function edited() {
      if (self.submitted) return;
      refreshSuggestions();
      self.edits += 1;
      self.pending = true;
      mirrorLocally(collectPayload());
      clearTimeout(self.saveTimer);
      if (!self.conflict) {
        setStatus("Unsaved changes…");
        self.saveTimer = setTimeout(saveDraft, DRAFT_DELAY_MS);
      }
    }

    function saveDraft() {
      if (!self.pending || self.conflict || self.submitted || self.submitting) return;
      if (self.saving) { self.saveTimer = setTimeout(saveDraft, DRAFT_DELAY_MS); return; }
      self.saving = true;
      var edits = self.edits;
      var collected = collectPayload();
      setStatus("Saving draft…");
      fetch(self.state.urls.draft, {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRFToken": csrfToken(), Accept: "application/json" },
        body: draftBody(collected.payload),
      }).then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          self.saving = false;
          if (self.submitted) return; // the label went in meanwhile: this draft no longer matters
          if (response.ok) {
            if (self.edits === edits) {
              // The server has it all: no copy of the label is left behind in the browser.
              self.pending = false;
              storageRemove(self.storageKey);
            }
            setStatus("Draft saved " + new Date().toLocaleTimeString());
          } else if (response.status === 409) {
            conflictFound(body.error);
          } else {
            showAlert(body.error || "The draft could not be saved (" + response.status + ").");
            setStatus("Draft not saved.");
          }
        });
      }).catch(function () {
        self.saving = false;
        setStatus("Offline: your draft is kept in this browser and is sent when the connection is back.");
      });
    }

    function conflictFound(message) {
      self.conflict = true;
      self.pending = false;
      clearTimeout(self.saveTimer);
      storageRemove(self.storageKey);
      showAlert((message || "A newer label exists for this turn.") + " Your changes here were not saved over it.", true);
      setStatus("A newer label exists: reload to see it.");
    }

    function sendBeaconIfPending() {
      // The page is going away: fetch may be cut off, a beacon is delivered anyway.
      if (!self.pending || self.conflict || self.submitted || self.beaconEdits === self.edits) return;
      if (navigator.sendBeacon && navigator.sendBeacon(self.state.urls.draft, draftBody(collectPayload().payload))) {
        self.beaconEdits = self.edits;
      }
    }

    function restoreLocalDraft() {
      var local = storageGet(self.storageKey);
      if (!local) return;
      if (local.base_version !== self.baseVersion) {
        storageRemove(self.storageKey); // a label was submitted since: this copy is stale
        return;
      }
      if (!local.pending) return; // the server already has it
      applyPayload(local.payload, local.attached_info);
      self.pending = true;
      self.edits += 1;
      setStatus("Restored unsaved changes kept in this browser; saving…");
      saveDraft();
    }

    // --- submit, skip, and the next turn --------------------------------------------------

    function submit(payload) {
      if (self.submitting || self.submitted) return;
      if (self.conflict) { showAlert("A newer label exists for this turn; reload before submitting.", true); return; }
      self.submitting = true;
      clearTimeout(self.saveTimer);
      clearAlert();
      setStatus(payload.skipped ? "Skipping…" : "Submitting…");
      fetch(self.state.urls.submit, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken(), Accept: "application/json" },
        body: JSON.stringify({ payload: payload, base_version: self.baseVersion, identical: identicalChosen() }),
      }).then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          self.submitting = false;
          if (!response.ok) {
            if (response.status === 409) conflictFound(body.error);
            else showAlert(body.error || "The label was not submitted (" + response.status + ").");
            setStatus("Not submitted.");
            return;
          }
          self.submitted = true;
          self.pending = false;
          storageRemove(self.storageKey);
          setStatus(payload.skipped ? "Skipped." : "Submitted.");
          goNext(body.next_turn_id, body.next_url, {
            turnId: body.saved_turn_id, url: body.saved_url, skipped: payload.skipped, appliedTo: body.applied_to || [],
          });
        });
      }).catch(function () {
        self.submitting = false;
        showAlert("The server could not be reached: the label was not submitted. Your draft is kept in this browser; try again.");
        setStatus("Not submitted.");
      });
    }

    // The repeats of this query to label alike, when the curator ticked the box: {turn id: version seen}.
    function identicalChosen() {
      var box = $("#wb-apply-identical");
      return box && box.checked ? (self.state.identical || {}) : {};
    }

    function submitCurrent() {
      var pending = refreshSuggestions();
      if (pending && !self.pendingWarned) {
        // An unaccepted suggestion is not a judgment: say so once rather than drop it silently.
        self.pendingWarned = true;
        showAlert(pending + (pending === 1 ? " suggestion is" : " suggestions are") +
          " not accepted yet: a accepts them, 1/2/3 or c/p/w judges one; ⏎ again submits without them.");
        return;
      }
      submit(collectPayload().payload);
    }

    function openSkip() {
      var panel = $("#wb-skip");
      panel.hidden = false;
      panel.querySelector("input").focus();
    }
    function closeSkip() {
      $("#wb-skip").hidden = true;
      focusPassage(self.lastPassage);
    }
    function confirmSkip() {
      var payload = collectPayload().payload;
      payload.skipped = true;
      payload.skip_reason = $("#wb-skip-reason").value.trim();
      if (!payload.skip_reason) { showAlert("A skip needs a reason."); $("#wb-skip-reason").focus(); return; }
      submit(payload);
    }

    function preloadNext() {
      fetch(self.state.urls.preload, {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRFToken": csrfToken(), Accept: "application/json" },
      }).then(function (response) { return response.ok ? response.json() : null; }).then(function (body) {
        if (!body || !body.next_turn_id) { self.preload = null; return; }
        var preload = { turnId: body.next_turn_id, url: body.next_url, html: null };
        preload.ready = fetch(body.next_url, { credentials: "same-origin" })
          .then(function (response) { return response.ok ? response.text() : null; })
          .then(function (html) { preload.html = html; return html; })
          .catch(function () { return null; });
        self.preload = preload;
      }).catch(function () { /* no preload: moving on loads the next page normally */ });
    }

    function goNext(turnId, url, saved) {
      var preload = self.preload;
      if (!turnId || !preload || preload.turnId !== turnId) { window.location.assign(url); return; }
      preload.ready.then(function (html) {
        if (html && swapIn(html, url, saved)) return;
        window.location.assign(url);
      });
    }

    // --- focus and keyboard ---------------------------------------------------------------

    function focusPassage(article) {
      if (!article || !root.contains(article)) article = passages()[0];
      if (!article) {
        // No passages: keep the shortcuts working by leaving text fields (focus goes to the page).
        if (isTextField(document.activeElement)) document.activeElement.blur();
        return;
      }
      article.focus({ preventScroll: true });
      article.scrollIntoView({ block: "nearest" });
    }

    function currentPassage() {
      var active = document.activeElement;
      var article = active && active.closest ? active.closest(".wb-passage") : null;
      return article || (self.lastPassage && root.contains(self.lastPassage) ? self.lastPassage : null);
    }

    function movePassage(delta) {
      var list = passages();
      if (!list.length) return;
      var index = list.indexOf(currentPassage());
      index = index === -1 ? 0 : Math.max(0, Math.min(list.length - 1, index + delta));
      focusPassage(list[index]);
    }

    function setRelevance(value) {
      var article = currentPassage() || passages()[0];
      if (!article) return;
      checkRadio(article, value);
      edited();
      var list = passages();
      var next = list[list.indexOf(article) + 1];
      focusPassage(next || article);
    }

    function rateAnswer(value) {
      checkRadio(form.querySelector(".wb-rating"), value);
      edited();
    }

    function toggleShortcuts(show) {
      var overlay = $("#wb-shortcuts");
      overlay.hidden = show === undefined ? !overlay.hidden : !show;
      if (overlay.hidden) focusPassage(self.lastPassage);
    }

    function toggleGuidelines(show) {
      var drawer = $("#wb-guidelines");
      drawer.hidden = show === undefined ? !drawer.hidden : !show;
      storageSet(GUIDELINES_KEY, !drawer.hidden);
    }

    // --- search and attach ----------------------------------------------------------------

    function hits() { return Array.prototype.slice.call(root.querySelectorAll(".wb-hit")); }

    function search() {
      var query = $("#wb-search-input").value.trim();
      var results = $("#wb-search-results");
      if (!query) return;
      var seq = ++self.searchSeq;
      results.setAttribute("aria-busy", "true");
      fetch(self.state.urls.search + "?q=" + encodeURIComponent(query), {
        credentials: "same-origin",
        headers: { "HX-Request": "true" },
      }).then(function (response) { return response.text(); }).then(function (html) {
        if (seq !== self.searchSeq) return;
        results.innerHTML = html; // a server-rendered fragment: user text in it is escaped
        results.removeAttribute("aria-busy");
        hits().forEach(function (hit) {
          if (root.querySelector('.wb-passage[data-kind="attached"][data-chunk-id="' + Number(hit.dataset.chunkId) + '"]')) markAttached(hit);
        });
      }).catch(function () {
        if (seq === self.searchSeq) { results.textContent = "The search failed: no connection."; results.removeAttribute("aria-busy"); }
      });
    }

    function markAttached(hit) {
      hit.classList.add("wb-hit-attached");
      var button = hit.querySelector(".wb-attach");
      if (button) button.textContent = "Attached ✓";
    }

    function attach(hit) {
      if (hit.dataset.retrievedRank) {
        setStatus("Already retrieved as #" + hit.dataset.retrievedRank + ": judge it in the list above.");
        return;
      }
      addAttached(Number(hit.dataset.chunkId), "relevant", {
        title: hit.dataset.title, text: hit.dataset.text, url: hit.dataset.documentUrl,
      });
      markAttached(hit);
      edited();
      setStatus("Attached as relevant: " + hit.dataset.title);
    }

    function onHitKey(event, hit) {
      var list = hits();
      var index = list.indexOf(hit);
      switch (event.key) {
        case "ArrowDown": case "j":
          if (list[index + 1]) list[index + 1].focus();
          return true;
        case "ArrowUp": case "k":
          if (index > 0) list[index - 1].focus(); else $("#wb-search-input").focus();
          return true;
        case "Enter": case "a":
          attach(hit);
          return true;
        default:
          return false;
      }
    }

    function onKey(event) {
      if (event.defaultPrevented || event.isComposing) return;
      var target = event.target;
      var overlay = $("#wb-shortcuts");
      if (self.tagsOpen && !isTextField(target) && !event.ctrlKey && !event.metaKey && !event.altKey) {
        if (onTagsKey(event)) { event.preventDefault(); return; }
      } else if (self.tagsOpen) {
        closeTags(true); // the curator went to a text field: the picker closes, the focus stays
      }
      if (event.key === "Escape") {
        if (!overlay.hidden) toggleShortcuts(false);
        else if (!$("#wb-skip").hidden) closeSkip();
        else if (!$("#wb-guidelines").hidden && !isTextField(target)) toggleGuidelines(false);
        else focusPassage(self.lastPassage);
        event.preventDefault();
        return;
      }
      if (!overlay.hidden) {
        if (event.key === "?") { toggleShortcuts(false); event.preventDefault(); }
        return;
      }
      if (isTextField(target)) {
        if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
          event.preventDefault();
          if (target.id === "wb-skip-reason") confirmSkip(); else submitCurrent();
        } else if (target.id === "wb-search-input") {
          if (event.key === "Enter") { event.preventDefault(); search(); }
          else if (event.key === "ArrowDown" && hits().length) { event.preventDefault(); hits()[0].focus(); }
        } else if (target.id === "wb-skip-reason") {
          if (event.key === "Enter") { event.preventDefault(); confirmSkip(); }
        } else if (event.key === "Enter" && target.tagName === "INPUT") {
          event.preventDefault(); // a one-line field (the rationale): Enter submits, as in any form
          submitCurrent();
        }
        return;
      }
      if (event.ctrlKey || event.metaKey || event.altKey) return;
      var hit = target.closest ? target.closest(".wb-hit") : null;
      if (hit && onHitKey(event, hit)) { event.preventDefault(); return; }
      switch (event.key) {
        case "j": case "ArrowDown": movePassage(1); break;
        case "k": case "ArrowUp": movePassage(-1); break;
        case "1": setRelevance("relevant"); break;
        case "2": setRelevance("partly"); break;
        case "3": setRelevance("not_relevant"); break;
        case "c": rateAnswer("correct"); break;
        case "p": rateAnswer("partly"); break;
        case "w": rateAnswer("wrong"); break;
        case "a": acceptSuggestions(); break;
        case "t": openTags(); break;
        case "g": form.elements.gold_answer.focus(); break;
        case "r":
          if (!form.elements.corrected_query) return;
          form.elements.corrected_query.focus();
          break;
        case "/": $("#wb-search-input").focus(); $("#wb-search-input").select(); break;
        case "s": openSkip(); break;
        case "b":
          if (!self.state.urls.previous) { setStatus("No earlier turn of yours in this knowledge base."); break; }
          sendBeaconIfPending();
          window.location.assign(self.state.urls.previous);
          break;
        case "?": toggleShortcuts(); break;
        case "h": toggleGuidelines(); break;
        case "x": case "Delete": {
          var article = currentPassage();
          if (article && article.dataset.kind === "attached") removeAttached(article);
          break;
        }
        case "Enter":
          // A focused link, button or <summary> keeps its own Enter (open the document, press
          // the button, unfold the earlier messages of the conversation).
          if (target.tagName === "A" || target.tagName === "BUTTON" || target.tagName === "SUMMARY") return;
          submitCurrent();
          break;
        default:
          return;
      }
      event.preventDefault();
    }

    function onClick(event) {
      var control = event.target.closest("[data-action]");
      if (!control || !root.contains(control)) return;
      var action = control.dataset.action;
      if (action === "attach") attach(control.closest(".wb-hit"));
      else if (action === "remove") removeAttached(control.closest(".wb-passage"));
      else if (action === "skip") openSkip();
      else if (action === "skip-confirm") confirmSkip();
      else if (action === "shortcuts") toggleShortcuts();
      else if (action === "guidelines") toggleGuidelines();
    }

    function onFormEvent(event) {
      var id = event.target.id;
      if (id === "wb-search-input" || id === "wb-skip-reason") return; // not part of the label
      if (id === "wb-corrected-query" && event.target.value.trim() && form.elements.rewrite_wrong) {
        form.elements.rewrite_wrong.checked = true; // writing a better query says the rewrite missed
      }
      edited();
    }

    function start() {
      form.addEventListener("input", onFormEvent);
      form.addEventListener("change", function (event) { if (event.target.type === "radio" || event.target.type === "checkbox") onFormEvent(event); });
      form.addEventListener("submit", function (event) { event.preventDefault(); submitCurrent(); });
      root.addEventListener("click", onClick);
      root.addEventListener("focusin", function (event) {
        var article = event.target.closest ? event.target.closest(".wb-passage") : null;
        if (article) self.lastPassage = article;
      });
      applyPayload(state.payload, null);
      restoreLocalDraft();
      if (storageGet(GUIDELINES_KEY)) $("#wb-guidelines").hidden = false;
      focusPassage(null);
      preloadNext();
    }

    self.onKey = onKey;
    self.sendBeaconIfPending = sendBeaconIfPending;
    self.saveDraft = saveDraft;
    self.start = start;
    return self;
  }

  // The "Saved" notice on a page swapped in from the preload (which was rendered before the
  // submit, so it names neither the saved turn nor it as the previous one): set both here.
  function showSaved(root, saved) {
    if (!saved || !saved.turnId) return;
    var notice = root.querySelector("#wb-saved");
    if (notice) {
      notice.textContent = (saved.skipped ? "Skipped" : "Saved") + " turn #" + saved.turnId +
        (saved.appliedTo.length ? " and " + saved.appliedTo.length + " repeat" + (saved.appliedTo.length === 1 ? "" : "s") : "") + " — ";
      var link = document.createElement("a");
      link.href = saved.url;
      link.textContent = "undo/edit";
      notice.appendChild(link);
      notice.hidden = false;
    }
    var state = root.querySelector("#workbench-state");
    if (state) {
      var parsed = JSON.parse(state.textContent);
      parsed.urls.previous = saved.url;
      state.textContent = JSON.stringify(parsed);
    }
    var previous = root.querySelector("#wb-previous");
    if (previous) { previous.href = saved.url; previous.lastChild.textContent = " Previous turn #" + saved.turnId; }
  }

  function swapIn(html, url, saved) {
    // Show the preloaded next turn without a page load; false if the HTML is not a judging page.
    var next = new DOMParser().parseFromString(html, "text/html");
    var nextRoot = next.getElementById("workbench");
    var current = document.getElementById("workbench");
    if (!nextRoot || !current) return false;
    var imported = document.importNode(nextRoot, true);
    showSaved(imported, saved);
    current.replaceWith(imported);
    document.title = next.title;
    // The address of the turn itself: the notice was for this moment, not for a reload.
    window.history.pushState({ workbench: true }, "", url.split("?")[0]);
    window.scrollTo(0, 0);
    boot();
    return true;
  }

  function boot() {
    var root = document.getElementById("workbench");
    if (!root) { page = null; return; }
    page = createPage(root);
    page.start();
  }

  document.addEventListener("keydown", function (event) { if (page) page.onKey(event); });
  document.addEventListener("visibilitychange", function () {
    if (page && document.visibilityState === "hidden") page.sendBeaconIfPending();
  });
  window.addEventListener("pagehide", function () { if (page) page.sendBeaconIfPending(); });
  window.addEventListener("beforeunload", function () { if (page) page.sendBeaconIfPending(); });
  window.addEventListener("online", function () { if (page) page.saveDraft(); });
  // Pages swapped in by pushState are not in the browser's cache of pages: load them on Back.
  window.addEventListener("popstate", function () { window.location.reload(); });

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
  else boot();
})();
