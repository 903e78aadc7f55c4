import { h } from './dom.js';

export default {
  id: 'queues',
  title: 'Queues',
  render(ctx, el) {
    el.append(h('p', {}, 'Coming soon.'));
  },
};
