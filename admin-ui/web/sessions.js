import { h } from './dom.js';

export default {
  id: 'sessions',
  title: 'Sessions',
  render(ctx, el) {
    el.append(h('p', {}, 'Coming soon.'));
  },
};
