import { h } from './dom.js';

export default {
  id: 'operations',
  title: 'Operations',
  render(ctx, el) {
    el.append(h('p', {}, 'Coming soon.'));
  },
};
