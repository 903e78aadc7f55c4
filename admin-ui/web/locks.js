import { h } from './dom.js';

export default {
  id: 'locks',
  title: 'Locks and semaphores',
  render(ctx, el) {
    el.append(h('p', {}, 'Coming soon.'));
  },
};
