// Queues: every queue's jobs by state with rate sparklines (refreshed every second); a
// queue's job list filtered by state; its dead letters with replay or delete of one, a
// selection or all; its schedules with their next runs; enqueue by hand; a job's detail;
// deleting an idle queue.

import { h, fill, button, field, message, table, pretty, fmtTime, fmtMs, sparkline, confirmAction, fmtNum } from './dom.js';
import { seg, qs } from './api.js';

export default {
  id: 'queues',
  title: 'Queues',
  render(ctx, el) {
    const { api } = ctx;
    let queue = ctx.args[0] || '';
    const overview = h('div', { id: 'queue-list' });
    const listMsg = h('p', { class: 'msg', hidden: true });
    const doneMsg = h('p', { class: 'msg', hidden: true, role: 'status', id: 'queues-msg' });
    const detail = h('div', { id: 'queue-detail' });
    el.append(h('section', { class: 'card' }, h('h2', {}, 'Queues'), doneMsg, listMsg, overview), detail);
    const rates = new Map(); // queue -> {completed:[], enq:[], dead:[], prev}

    ctx.poll(async () => {
      let r;
      try { r = await api.get('/v1/queues'); listMsg.hidden = true; } catch (e) { ctx.fail(listMsg, e); return; }
      const now = Date.now();
      for (const q of r.queues) {
        const x = rates.get(q.queue) || { done: [], total: [], prev: null };
        const total = q.ready + q.delayed + q.in_flight + q.dead + q.completed;
        if (x.prev) {
          const dt = Math.max(1, now - x.prev.at) / 1000;
          x.done.push((q.completed - x.prev.completed) / dt);
          x.total.push((total - x.prev.total) / dt);
          if (x.done.length > 60) { x.done.shift(); x.total.shift(); }
        }
        x.prev = { at: now, completed: q.completed, total };
        rates.set(q.queue, x);
      }
      fill(overview, table([
        ['queue', (q) => button(q.queue, () => open(q.queue), { class: 'link', 'data-queue': q.queue })],
        ['ready', (q) => fmtNum(q.ready)],
        ['delayed', (q) => fmtNum(q.delayed)],
        ['in flight', (q) => fmtNum(q.in_flight)],
        ['dead', (q) => h('span', { class: q.dead ? 'bad' : '', 'data-dead': q.queue }, fmtNum(q.dead))],
        ['completed', (q) => fmtNum(q.completed)],
        ['enqueued/s', (q) => sparkline(rates.get(q.queue).total, { label: `${q.queue} jobs enqueued per second` })],
        ['acked/s', (q) => sparkline(rates.get(q.queue).done, { label: `${q.queue} jobs completed per second` })],
      ], r.queues, { empty: 'No queues yet: enqueue a job to make one.', rowAttrs: (q) => ({ class: q.queue === queue ? 'selected' : '' }) }));
    }, 1000);

    function open(name) {
      queue = name;
      history.replaceState(null, '', name ? `#/queues/${encodeURIComponent(name)}` : '#/queues');
      renderQueue();
    }

    function renderQueue() {
      if (!queue) {
        fill(detail, enqueueCard(''));
        return;
      }
      const dead = h('div', { id: 'dead-list' });
      const deadMsg = h('p', { class: 'msg', hidden: true, role: 'status', id: 'dead-msg' });
      const schedules = h('div', { id: 'schedules' });
      const job = h('div', { id: 'job-detail' });
      const selected = new Set();
      const mayWrite = ctx.can('queues', 'write', queue) !== false;
      const replay = async (body, what) => {
        try {
          const r = await api.post(`/v1/queues/${seg(queue)}/dead/replay`, body);
          message(deadMsg, 'ok', `Replayed ${r.replayed} ${what}.`);
          selected.clear();
          loadDead();
        } catch (e) { ctx.fail(deadMsg, e); }
      };
      const remove = async (body, what) => {
        if (!(await confirmAction(`Delete ${what} of ${queue} for good? Deleted jobs cannot be replayed.`, { action: 'Delete' }))) return;
        try {
          const r = await api.post(`/v1/queues/${seg(queue)}/dead/delete`, body);
          message(deadMsg, 'ok', `Deleted ${r.deleted} dead job(s).`);
          selected.clear();
          loadDead();
        } catch (e) { ctx.fail(deadMsg, e); }
      };
      const replaySel = button('Replay selected', () => replay({ ids: [...selected] }, 'selected job(s)'), { id: 'replay-selected', disabled: true });
      const replayAll = button('Replay all', async () => {
        if (await confirmAction(`Replay every dead job of ${queue}?`, { action: 'Replay all' })) replay({ all: true }, 'dead job(s)');
      }, { id: 'replay-all', disabled: !mayWrite });
      const deleteSel = button('Delete selected', () => remove({ ids: [...selected] }, `${selected.size} selected dead job(s)`), { id: 'delete-selected', class: 'danger', disabled: true });
      const deleteAll = button('Delete all', () => remove({ all: true }, 'every dead job'), { id: 'delete-all', class: 'danger', disabled: !mayWrite });
      const selectionChanged = () => { replaySel.disabled = deleteSel.disabled = !selected.size || !mayWrite; };
      const queueMsg = h('p', { class: 'msg', hidden: true, role: 'status', id: 'queue-msg' });
      const deleteQueue = button('Delete queue', async () => {
        if (!(await confirmAction(`Delete queue ${queue}? Only a queue without jobs (in any state) and schedules can be deleted.`, { action: 'Delete queue' }))) return;
        try {
          await api.del(`/v1/queues/${seg(queue)}`);
          message(doneMsg, 'ok', `Deleted queue ${queue}.`);
          open('');
        } catch (e) { ctx.fail(queueMsg, e); }
      }, { id: 'delete-queue', class: 'danger', disabled: !mayWrite });
      const jobs = h('div', { id: 'job-list' });
      const jobsMsg = h('p', { class: 'msg', hidden: true });
      const stateSel = h('select', { id: 'job-state', 'aria-label': 'State', onchange: () => { lastJobs = ''; loadJobs(); } },
        [['', 'every state'], ['ready', 'ready'], ['delayed', 'delayed'], ['in_flight', 'in flight'], ['dead', 'dead']].map(([v, t]) => h('option', { value: v }, t)));
      fill(detail,
        h('section', { class: 'card' }, h('h2', {}, 'Jobs of ', h('code', {}, queue)),
          h('div', { class: 'row' }, h('label', { class: 'field' }, h('span', {}, 'State'), stateSel), deleteQueue), queueMsg, jobsMsg, jobs),
        h('section', { class: 'card' }, h('h2', {}, 'Dead letters of ', h('code', {}, queue)),
          h('div', { class: 'row' }, replaySel, replayAll, deleteSel, deleteAll), deadMsg, dead),
        h('div', { class: 'grid' },
          h('section', { class: 'card' }, h('h2', {}, 'Job detail'), job),
          h('section', { class: 'card' }, h('h2', {}, 'Schedules'), schedules)),
        enqueueCard(queue));

      let lastDead = '';
      async function loadDead() {
        let r;
        try { r = await api.get(`/v1/queues/${seg(queue)}/dead${qs({ limit: 1000 })}`); } catch (e) { ctx.fail(deadMsg, e); return; }
        const sig = JSON.stringify(r.jobs.map((j) => j.id));
        if (sig === lastDead) return;
        lastDead = sig;
        for (const id of [...selected]) if (!r.jobs.some((j) => j.id === id)) selected.delete(id);
        selectionChanged();
        fill(dead, table([
          ['', (j) => h('input', { type: 'checkbox', 'aria-label': `select job ${j.id}`, 'data-select': j.id, checked: selected.has(j.id), onchange: (e) => { if (e.target.checked) selected.add(j.id); else selected.delete(j.id); selectionChanged(); } })],
          ['job', (j) => button(j.id, () => showJob(j.id), { class: 'link' })],
          ['attempts', (j) => `${j.attempt}/${j.max_attempts}`],
          ['last error', (j) => j.last_error ?? '–'],
          ['created', (j) => fmtTime(j.created_at_ms)],
          ['', (j) => h('div', { class: 'row' },
            button('Replay', () => replay({ ids: [j.id] }, `job ${j.id}`), { disabled: !mayWrite, 'data-replay': j.id }),
            button('Delete', () => remove({ ids: [j.id] }, `dead job ${j.id}`), { class: 'danger', disabled: !mayWrite, 'data-delete': j.id }))],
        ], r.jobs, { empty: 'No dead jobs.' }));
      }

      let lastJobs = '';
      async function loadJobs() {
        let r;
        try { r = await api.get(`/v1/queues/${seg(queue)}/jobs${qs({ state: stateSel.value, limit: 200 })}`); jobsMsg.hidden = true; } catch (e) { ctx.fail(jobsMsg, e); return; }
        const sig = JSON.stringify(r.jobs.map((j) => [j.id, j.state, j.attempt, j.worker]));
        if (sig === lastJobs) return;
        lastJobs = sig;
        fill(jobs, table([
          ['job', (j) => button(j.id, () => showJob(j.id), { class: 'link', 'data-job': j.id })],
          ['state', (j) => h('span', { class: j.state === 'dead' ? 'bad' : '' }, j.state.replace('_', ' '))],
          ['attempts', (j) => `${j.attempt}/${j.max_attempts}`],
          ['priority', (j) => String(j.priority)],
          ['due', (j) => (j.state === 'delayed' ? `in ${fmtMs(j.due_in_ms)}` : '–')],
          ['worker', (j) => j.worker ?? '–'],
          ['payload', (j) => h('code', {}, JSON.stringify(j.payload).slice(0, 80))],
        ], r.jobs, { empty: stateSel.value ? `No ${stateSel.value.replace('_', ' ')} jobs.` : 'No jobs.' }),
        r.jobs.length >= 200 ? h('p', { class: 'empty' }, 'The first 200 are shown.') : null);
      }

      async function showJob(id) {
        try {
          const j = await api.get(`/v1/jobs/${seg(id)}`);
          fill(job, h('dl', { class: 'kv' },
            h('dt', {}, 'id'), h('dd', {}, h('code', {}, j.id)),
            h('dt', {}, 'state'), h('dd', {}, j.state),
            h('dt', {}, 'attempts'), h('dd', {}, `${j.attempt} of ${j.max_attempts}`),
            h('dt', {}, 'priority'), h('dd', {}, String(j.priority)),
            h('dt', {}, 'due in'), h('dd', {}, fmtMs(j.due_in_ms)),
            h('dt', {}, 'worker'), h('dd', {}, j.worker ?? '–'),
            h('dt', {}, 'unique key'), h('dd', {}, j.unique_key ?? '–'),
            h('dt', {}, 'last error'), h('dd', {}, j.last_error ?? '–'),
            h('dt', {}, 'created'), h('dd', {}, fmtTime(j.created_at_ms))),
          h('h3', {}, 'Payload'), h('pre', {}, pretty(j.payload)));
        } catch (e) {
          const m = h('p', { class: 'msg' });
          if (e.status === 404) message(m, 'info', `Job ${id} is completed or gone.`); else ctx.fail(m, e);
          fill(job, m);
        }
      }
      const [jobField, jobInput] = field('Job id', { id: 'job-id' });
      fill(job, h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); showJob(jobInput.value); } }, jobField, h('button', { type: 'submit' }, 'Show')),
        h('p', { class: 'empty' }, 'Pick a job or give an id.'));

      async function loadSchedules() {
        try {
          const r = await api.get(`/v1/queues/${seg(queue)}/schedules`);
          fill(schedules, table([
            ['name', (s) => s.name],
            ['cron (UTC)', (s) => h('code', {}, s.cron)],
            ['next run', (s) => `${fmtTime(s.next_at_ms)} (in ${fmtMs(s.next_at_ms - Date.now())})`],
            ['payload', (s) => h('code', {}, JSON.stringify(s.payload))],
          ], r.schedules, { empty: 'No schedules.' }));
        } catch (e) { const m = h('p', { class: 'msg' }); ctx.fail(m, e); fill(schedules, m); }
      }
      ctx.poll(loadDead, 1000);
      ctx.poll(loadJobs, 1000);
      ctx.poll(loadSchedules, 5000);
    }

    function enqueueCard(q) {
      const [qField, qInput] = field('Queue', { id: 'enqueue-queue', value: q, required: true });
      const [pField, pInput] = field('Payload (JSON)', { id: 'enqueue-payload', multiline: true });
      pInput.value = '{\n  "task": "example"\n}';
      const [dField, dInput] = field('Delay (ms)', { id: 'enqueue-delay', type: 'number', min: 0 });
      const [prField, prInput] = field('Priority', { id: 'enqueue-priority', type: 'number' });
      const [aField, aInput] = field('Max attempts', { id: 'enqueue-attempts', type: 'number', min: 1 });
      const m = h('p', { class: 'msg', hidden: true, role: 'status', id: 'enqueue-msg' });
      return h('section', { class: 'card' }, h('h2', {}, 'Enqueue a job'),
        h('form', { onsubmit: async (e) => {
          e.preventDefault();
          let payload;
          try { payload = JSON.parse(pInput.value); } catch (err) { message(m, 'error', `The payload is not JSON: ${err.message}`); return; }
          const body = { payload };
          if (dInput.value) body.delay_ms = Number(dInput.value);
          if (prInput.value) body.priority = Number(prInput.value);
          if (aInput.value) body.max_attempts = Number(aInput.value);
          try {
            const r = await api.post(`/v1/queues/${seg(qInput.value)}/jobs`, body);
            message(m, 'ok', `Enqueued job ${r.id}${r.existing ? ' (already queued)' : ''}.`);
          } catch (err) { ctx.fail(m, err); }
        } }, h('div', { class: 'row' }, qField, dField, prField, aField), pField, h('button', { type: 'submit', id: 'enqueue' }, 'Enqueue')), m);
    }
    renderQueue();
  },
};
